"""A small character-level tokenizer saved beside a tiny base model, so text in/out works offline."""

from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHARS = string.ascii_lowercase + string.digits + " .,:;!?'-+=()\n" + string.ascii_uppercase


def save_char_tokenizer(path: str | Path, vocab_size: int = 128) -> Path:
    """Write tokenizer files into ``path`` (a model directory); ids: 0 pad, 1 eos, 2 unk, then characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    if len(vocab) > vocab_size:
        raise ValueError(f"the character tokenizer needs {len(vocab)} ids; the model has {vocab_size}")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return Path(path)
