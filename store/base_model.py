"""The base model an adapter was made for: its identity as recorded in a manifest, and how its fingerprint is made.

Shared by the worker (fingerprints the model it serves, refuses adapters recorded for another), the SDK and the
CLI (record the fingerprint when pushing) and the store (keeps it in the manifest). Light to import: torch and
transformers load only when :func:`fingerprint` runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# Config fields that fix tensor shapes, across the architectures transformers names them in.
SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "n_embd", "n_layer", "n_head", "n_inner",
                "ffn_dim", "word_embed_proj_dim", "tie_word_embeddings")

# Module names of adapter wrappers (PEFT's, and the worker's own): the wrapped base module lives one level down.
_WRAPPED = {"base_layer", "original_module"}
_ADAPTER_PARTS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
                  "modules_to_save", "lora_dropout"}


@dataclass(frozen=True)
class BaseModelIdentity:
    """Empty fields are unknown."""

    name_or_path: str = ""   # as recorded in adapter_config.json
    fingerprint: str = ""    # "sha256:...", as :func:`fingerprint` computes it


def fingerprint(model: nn.Module) -> str:
    """sha256 over the architecture, the shape-fixing config fields and every targetable module's shape.

    Two workers with the same fingerprint accept exactly the same adapters. A PeftModel (or a model with adapters
    injected) gives the fingerprint of its base model: adapter wrappers are looked through, adapter parts skipped.
    """
    from torch import nn  # noqa: PLC0415 - torch only when a model is fingerprinted
    from transformers.pytorch_utils import Conv1D  # noqa: PLC0415

    get_base_model = getattr(model, "get_base_model", None)
    if get_base_model is not None:
        model = get_base_model()
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
