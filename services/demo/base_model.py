"""The demo base model: a small Llama built from a config with a fixed seed (nothing here downloads weights),
saved with save_pretrained beside a character-level tokenizer, so it is served exactly like a real model dir."""

from __future__ import annotations

import string
from pathlib import Path
from typing import TypedDict

SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHARS = string.ascii_lowercase + string.digits + " .,:;!?'-+=()\n" + string.ascii_uppercase


class DemoConfig(TypedDict):
    """The ``LlamaConfig`` keyword arguments of the demo model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    pad_token_id: int
    eos_token_id: int
    bos_token_id: int | None


DEMO_CONFIG = DemoConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)


def save_char_tokenizer(path: str | Path, vocab_size: int = 128) -> Path:
    """Tokenizer files in ``path``; ids: 0 pad, 1 eos, 2 unk, then one id per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415 - heavy
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - heavy

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    if len(vocab) > vocab_size:
        raise ValueError(f"the character tokenizer needs {len(vocab)} ids; the model has {vocab_size}")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return Path(path)


def build_demo_base(path: str | Path, seed: int = 0) -> Path:
    """Write the demo base model to ``path`` unless it is already there."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch  # noqa: PLC0415 - heavy; `python -m adapterfleet.demo --help` stays instant
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415 - heavy

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**DEMO_CONFIG))
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(str(tmp))
    save_char_tokenizer(tmp, DEMO_CONFIG["vocab_size"])
    tmp.rename(path)
    return path
