"""Tests use the product's character tokenizer (adapterfleet.demo.base_model)."""

from adapterfleet.demo.base_model import save_char_tokenizer

__all__ = ["save_char_tokenizer"]
