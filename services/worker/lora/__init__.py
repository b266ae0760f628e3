"""Batched multi-adapter LoRA on one transformers model, matching PEFT's PeftModel on the same files.

Public surface: :class:`LoraModel` (install / remove / rows), :class:`AdapterWeights` (an adapter's tensors per
module), :func:`check_compatible`, :func:`inject` and :class:`RowContext` for callers that wire things themselves.
"""

from .compat import check_compatible
from .context import NO_ADAPTER, RowContext, Rows
from .inject import inject, wrappers
from .lora_model import LoraModel
from .native import KernelUnavailable, LowRankKernel
from .weights import AdapterWeights, ModuleLora

__all__ = [
    "NO_ADAPTER",
    "AdapterWeights",
    "KernelUnavailable",
    "LoraModel",
    "LowRankKernel",
    "ModuleLora",
    "RowContext",
    "Rows",
    "check_compatible",
    "inject",
    "wrappers",
]
