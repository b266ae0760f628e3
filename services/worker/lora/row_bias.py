"""Per-row bias replacement on a module that is not a LoRA target (PEFT ``bias="all"``: e.g. GPT-2's LayerNorms).

PEFT loads such biases into the base model itself, for every row and every adapter. Here they replace the base
bias only on the rows of the adapter that carries them::

    y_b = base(x_b) + (b1 - b0)[l]       # the module adds its bias last, along the last dim (LayerNorm)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import SlotWrapper, module_tensor
from .slot_stack import Entry, Field
from .weights import ModuleLora


def adds_bias_last(module: nn.Module) -> bool:
    """Modules whose output is ``f(x) + bias`` along the last dim, so a bias can be swapped by adding a delta."""
    if getattr(module, "bias", None) is None:
        return False
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


class RowBias(SlotWrapper):
    FIELDS: ClassVar[dict[str, Field]] = {"shift": Field(0.0)}  # entry [dim] = adapter bias - base bias

    @torch.no_grad()
    def prepare(self, m: ModuleLora) -> tuple[dict[str, Entry | None], int]:
        b0 = module_tensor(self.base_layer, "bias")  # adds_bias_last: the module has one
        assert m.bias is not None, "a row-bias module is planned only for an adapter bias (compat._check_module)"
        b1 = m.bias.to(device=b0.device, dtype=torch.float32)
        return {"shift": (b1 - b0.to(torch.float32)).to(b0.dtype)}, 0

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (y := self._per_token(x, *args, **kwargs)) is not None:  # a fused step: each token is a row
            return y
        y = self.base_layer(x, *args, **kwargs)
        stack = self._stack
        local = self._local_rows(stack, x.shape[0], x.device)  # [batch]
        if local is None:
            return y
        shift = stack.tensor("shift")[local]  # [batch, dim]
        return y + shift.view(y.shape[0], *([1] * (y.dim() - 2)), -1).to(y.dtype)
