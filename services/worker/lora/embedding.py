"""Per-row LoRA / DoRA on ``nn.Embedding`` (PEFT's lora_embedding_A [r, num_embeddings], lora_embedding_B [dim, r]).

For row b with local stack row ``l`` and token ids ``t``::

    y_b = scale[l] * base(t) + (A_T[l][t] @ B[l].T) * embed_scale

with ``A_T = lora_embedding_A.T`` ([num_embeddings, r], a lookup table like the base weight) and, per adapter:

    plain LoRA:  B[l] = scaling * B         scale = 1
    DoRA:        B[l] = s * scaling * B     s = m / ||W.T + scaling * B @ A||_row   (PEFT's DoraEmbeddingLayer)

``embed_scale`` is the base module's own scalar (e.g. Gemma's scaled embeddings), applied as PEFT does: after the
DoRA norm. Rows without an adapter here hit local row 0 (zeros, scale 1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import SlotWrapper
from .context import RowContext
from .slot_stack import Entry, Field
from .weights import ModuleLora


class LoraEmbedding(SlotWrapper):
    FIELDS: ClassVar[dict[str, Field]] = {
        "A_T": Field(0.0, rank_dim=1),  # entry [num_embeddings, r]
        "B": Field(0.0, rank_dim=1),  # entry [dim, r], scaling (and DoRA scale) folded in
        "scale": Field(1.0),  # entry [dim]; DoRA only
    }
    base_layer: nn.Embedding  # set by SlotWrapper.__init__

    def __init__(self, base_layer: nn.Embedding, ctx: RowContext):
        super().__init__(base_layer, ctx)
        self.num_embeddings = base_layer.num_embeddings
        self.embedding_dim = base_layer.embedding_dim
        self.padding_idx = base_layer.padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def _embed_scale(self) -> torch.Tensor | None:
        scale = getattr(self.base_layer, "embed_scale", None)
        if scale is None:
            return None
        if not isinstance(scale, torch.Tensor):
            return torch.tensor(float(scale))
        return scale if scale.numel() == 1 else None

    @torch.no_grad()
    def prepare(self, m: ModuleLora) -> tuple[dict[str, Entry | None], int]:
        w = self.base_layer.weight  # [num_embeddings, dim]
        dtype, device = w.dtype, w.device
        assert m.lora_A is not None and m.lora_B is not None, "embedding LoRA comes with a rank (compat._check_lora)"
        a = m.lora_A.to(device=device, dtype=torch.float32)  # [r, num_embeddings]
        b = m.lora_B.to(device=device, dtype=torch.float32)  # [dim, r]
        entries: dict[str, Entry | None] = {}
        if m.magnitude is not None:
            norm = torch.linalg.norm(w.T.to(torch.float32) + m.scaling * (b @ a), dim=1)  # [dim]
            s = m.magnitude.to(device=device, dtype=torch.float32) / norm  # [dim]
            b = b * (s * m.scaling).unsqueeze(1)
            entries["scale"] = s.to(dtype)
        else:
            b = b * m.scaling
        entries["A_T"] = a.T.contiguous().to(dtype)
        entries["B"] = b.to(dtype)
        return entries, m.rank

    def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (y := self._per_token(ids, *args, feature_dims=0, **kwargs)) is not None:  # a fused step: a row a token
            return y
        y = self.base_layer(ids, *args, **kwargs)
        stack = self._stack
        local = self._local_rows(stack, ids.shape[0], ids.device)  # [batch]
        if local is None:
            return y
        batch = ids.shape[0]
        out = y.reshape(batch, -1, self.embedding_dim)  # [batch, tokens, dim]
        a_t, b, scale = stack.tensor("A_T"), stack.tensor("B"), stack["scale"]
        if scale is not None:
            out = out * scale[local].unsqueeze(1)  # [batch, 1, dim]
        h = a_t[local.unsqueeze(1), ids.reshape(batch, -1)]  # [batch, tokens, rank]
        delta = torch.bmm(h, b[local].transpose(1, 2))  # [batch, tokens, dim]
        embed_scale = self._embed_scale()
        if embed_scale is not None:
            delta = delta * embed_scale.to(device=delta.device, dtype=delta.dtype)
        return (out + delta.to(out.dtype)).reshape(y.shape)
