"""The base model a worker serves: loaded once from a transformers directory, with its fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapterfleet.common.errors import FailedPrecondition, InvalidArgument

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config fields that fix tensor shapes, across the architectures transformers names them in.
SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "n_embd", "n_layer", "n_head", "n_inner",
                "ffn_dim", "word_embed_proj_dim", "tie_word_embeddings")


# Module names of adapter wrappers (PEFT's, and the worker's own): the wrapped base module lives one level down.
_WRAPPED = {"base_layer", "original_module"}
_ADAPTER_PARTS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
                  "modules_to_save", "lora_dropout"}


def fingerprint(model: nn.Module) -> str:
    """sha256 over the architecture, the shape-fixing config fields and every targetable module's shape.

    Two workers with the same fingerprint accept exactly the same adapters. A PeftModel (or a model with adapters
    injected) gives the fingerprint of its base model: adapter wrappers are looked through, adapter parts skipped.
    """
    from transformers.pytorch_utils import Conv1D

    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    config = model.config
    modules = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, nn.Linear | Conv1D | nn.Embedding) and not _ADAPTER_PARTS.intersection(parts):
            canonical = ".".join(p for p in parts if p not in _WRAPPED)
            modules[canonical] = [type(module).__name__, list(module.weight.shape)]
    body = {
        "architectures": list(getattr(config, "architectures", None) or [type(model).__name__]),
        "config": {k: getattr(config, k) for k in SHAPE_FIELDS if getattr(config, k, None) is not None},
        "modules": modules,
    }
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ModelHost:
    path: str
    model: nn.Module
    tokenizer: object | None
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    eos_ids: tuple[int, ...]
    pad_id: int

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "float32") -> "ModelHost":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FailedPrecondition(f"{path} is not a transformers model directory (no config.json); pass "
                                     "--base-model the directory save_pretrained wrote")
        if dtype not in DTYPES:
            raise InvalidArgument(f"--dtype {dtype} is not one of {sorted(DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise FailedPrecondition(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], use_safetensors=True)
        model.to(device).eval()
        model.requires_grad_(False)
        tokenizer = None
        if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else model.config.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        pad = model.config.pad_token_id
        pad = pad if pad is not None else (eos_ids[0] if eos_ids else 0)
        return cls(str(path), model, tokenizer, torch.device(device), DTYPES[dtype], fingerprint(model), eos_ids,
                   int(pad))
