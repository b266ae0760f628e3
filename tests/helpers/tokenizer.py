"""Tests use the product's character tokenizer (services.demo.base_model)."""

from services.demo.base_model import save_char_tokenizer

__all__ = ["save_char_tokenizer"]
