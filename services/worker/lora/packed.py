"""Base-model linear weights prepacked once for oneDNN, on a CPU.

A serving worker's base weights never change, so each ``nn.Linear``'s weight can be reordered once, at load, into
the blocked layout oneDNN's GEMM reads (``torch.ops.mkldnn._reorder_linear_weight``); every forward then runs
``torch.ops.mkldnn._linear_pointwise`` on it instead of repacking inside MKL's sgemm on every call. vLLM's CPU
backend does the same. Measured on the 2-core AMD EPYC (AVX-512) box, float32, ms per call
(``benchmarks/few_rows.py`` has the side-by-side):

    output head 512 -> 32000:  32 rows F.linear 16.8, transposed (few_rows) 10.3, packed 5.7;  1 row 6.8 -> 2.6
    MLP 512 -> 1408:           32 rows 0.41 / 0.31 / 0.24;  2048 rows (a prefill) 16.8 / 17.1 / 15.0

so it replaces the transposed few-row GEMM wherever oneDNN is built in, and helps prefills too. The packed copy
is kept beside the module's own weight (which the compatibility checks, DoRA's norms and state dicts read), so the
base model's linear weights take twice their memory: ``--no-packed-weights`` turns this off. Values can differ
from ``F.linear`` in the last float bits (another blocking of the same sums); greedy tokens are compared with
PEFT's in the tests. Only float32 weights on a CPU are packed; anything else runs as before.
"""

from __future__ import annotations

import weakref
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class Packed:
    """One linear layer's weight (and bias) in oneDNN's layout: ``y = x @ W.T + b``."""

    __slots__ = ("bias", "source", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int):
        self.source = weight  # the module's own parameter: a module whose weight was replaced is not served from here
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)  # noqa: SLF001 - torch's op name
        self.bias = None if bias is None else bias.detach()

    def linear(self, x: torch.Tensor) -> torch.Tensor | None:
        """``F.linear(x, W, b)`` for ``x`` [..., in] (a new contiguous [..., out]); None for an input it does not
        take (another dtype or device, or under autocast)."""
        if x.dtype != self.source.dtype or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return None
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")  # noqa: SLF001


_PACKED: weakref.WeakKeyDictionary[nn.Module, Packed] = weakref.WeakKeyDictionary()


def available() -> bool:
    return torch.backends.mkldnn.is_available()


def of(module: nn.Module) -> Packed | None:
    """The packed weight of ``module`` if :func:`pack_linears` packed it and the module still holds that weight.

    Keyed by the module object: a deep copy (a ``modules_to_save`` copy with the adapter's own weight) is not
    found here and runs ``F.linear`` on its own tensors."""
    pack = _PACKED.get(module)
    return pack if pack is not None and getattr(module, "weight", None) is pack.source else None


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``module``'s ``x @ W.T + b`` from its packed weight; None where it has none or does not take ``x``."""
    pack = of(module)
    return None if pack is None else pack.linear(x)


def pack_linears(model: nn.Module, batch_hint: int) -> int:
    """Pack every plain float32 CPU ``nn.Linear`` of ``model`` and route its forward through the packed weight.
    ``batch_hint`` is the row count oneDNN picks its layout for (the engine's batch). Returns how many were packed."""
    if not available():
        return 0
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module) is not nn.Linear or not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32
                or weight.device.type != "cpu" or module in _PACKED):
            continue
        _PACKED[module] = Packed(weight, module.bias, batch_hint)
        # this instance only; a deep copy of the module gets a partial bound to the copy, which finds no packed weight
        module.forward = partial(_forward, module)  # type: ignore[method-assign]
        count += 1
    return count


def _forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    y = linear(module, x)
    return F.linear(x, module.weight, module.bias) if y is None else y
