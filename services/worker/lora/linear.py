"""Per-row LoRA / DoRA / bias on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2, PEFT's fan_in_fan_out).

For row b with adapter slot s (local stack row ``l``)::

    y_b = scale[l] * base(x_b) + shift[l] + (x_b @ A[l].T) @ B[l].T

with, per adapter (``scaling`` = alpha/r or alpha/sqrt(r), ``b0`` = base bias, ``b1`` = the adapter's bias or b0):

    plain LoRA:  B[l] = scaling * B          scale = 1                      shift = b1 - b0
    DoRA:        B[l] = s * scaling * B      s = m / ||W + scaling*B@A||_row  shift = b1 - s*b0

DoRA as PEFT's ``DoraLinearLayer.forward`` computes it: ``base + (s - 1) * (base - bias) + s * scaling * B(A(x))``
where ``base`` already carries the (possibly adapter-replaced) bias and the norm is of the base weight alone
(never its bias), detached, i.e. a constant per adapter that we precompute at install. Rows without an adapter
(or whose adapter does not touch this module) hit local row 0: A = B = 0, scale = 1, shift = 0.
"""

from __future__ import annotations

import torch
from torch import nn

from services.common.errors import Incompatible

from .base import SlotWrapper
from .slot_stack import Field
from .weights import ModuleLora

try:  # transformers' GPT-2 style linear layer: weight [in, out], y = x @ W + b
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if Conv1D and isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or bool(Conv1D) and isinstance(module, Conv1D)


class LoraLinear(SlotWrapper):
    FIELDS = {
        "A": Field(0.0, rank_dim=0),  # entry [r, in]
        "B": Field(0.0, rank_dim=1),  # entry [out, r], scaling (and DoRA scale) folded in
        "scale": Field(1.0),  # entry [out]; DoRA only
        "shift": Field(0.0),  # entry [out]; bias replacement (and DoRA's rescaled base bias)
    }

    def __init__(self, base_layer: nn.Module, ctx):
        super().__init__(base_layer, ctx)
        self.in_features, self.out_features = linear_shape(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def base_weight(self) -> torch.Tensor:
        """The base weight as [out, in]."""  # noqa: D401
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    @torch.no_grad()
    def prepare(self, m: ModuleLora) -> tuple[dict[str, torch.Tensor | None], int]:
        """Per-slot stack entries for one adapter's change to this module (computed in float32)."""
        w = self.base_layer.weight
        dtype, device = w.dtype, w.device
        b0 = self.base_layer.bias
        entries: dict[str, torch.Tensor | None] = {}
        s = None
        if m.rank:
            a = m.lora_A.to(device=device, dtype=torch.float32)  # [r, in]
            b = m.lora_B.to(device=device, dtype=torch.float32)  # [out, r]
            if m.magnitude is not None:
                w32 = self.base_weight().to(torch.float32)  # [out, in]
                norm = torch.linalg.norm(w32 + m.scaling * (b @ a), dim=1)  # [out]
                s = m.magnitude.to(device=device, dtype=torch.float32) / norm  # [out]
                b = b * (s * m.scaling).unsqueeze(1)
                entries["scale"] = s.to(dtype)
            else:
                b = b * m.scaling
            entries["A"] = a.to(dtype)
            entries["B"] = b.to(dtype)
        if m.bias is not None or (s is not None and b0 is not None):
            if m.bias is not None and b0 is None:
                raise Incompatible(
                    f"adapter carries a bias for {m.path} but the base model's module has none; was it trained on "
                    "a different base model?"
                )
            b0_32 = b0.to(torch.float32)
            b1 = m.bias.to(device=device, dtype=torch.float32) if m.bias is not None else b0_32
            entries["shift"] = (b1 - (b0_32 if s is None else s * b0_32)).to(dtype)
        return entries, m.rank

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        stack = self._stack  # read once: add/remove swap it whole
        local = self._local_rows(stack, x.shape[0], x.device)  # [batch]
        if local is None:
            return y
        batch = x.shape[0]
        out = y.reshape(batch, -1, self.out_features)  # [batch, tokens, out]
        scale, shift, a, b = stack["scale"], stack["shift"], stack["A"], stack["B"]
        if scale is not None:
            out = out * scale[local].unsqueeze(1)  # [batch, 1, out]
        if shift is not None:
            out = out + shift[local].unsqueeze(1)  # [batch, 1, out]
        if a is not None:
            xs = x.reshape(batch, -1, self.in_features).to(a.dtype)  # [batch, tokens, in]
            h = torch.bmm(xs, a[local].transpose(1, 2))  # [batch, tokens, rank]
            out = out + torch.bmm(h, b[local].transpose(1, 2)).to(out.dtype)  # [batch, tokens, out]
        return out.reshape(y.shape)
