"""One forward over the tokens of several batches at once: the engine's fused step.

A decode step of B rows and a newcomer's prefill chunk are two forwards when each is a rectangular batch, and each
forward reads every weight of the model: on the 2-core box a 1-token forward costs 11 ms, a 32-row decode step 25 ms
and a 64-token prefill 26 ms (``benchmarks/RESULTS.md``). Here their tokens are laid end to end as one row
([1, sum of rows x columns]) so the linear layers (the weight reads, and the LoRA terms, per token through
``LoraModel.rows(..., flat=True)``) run once for all of them, while attention runs per :class:`Segment` against that
segment's own KV cache and mask:

* :class:`_Cache` stands in for the model's cache: a layer's ``update`` splits the new keys/values by segment and
  appends each part to its segment's cache;
* the attention implementation ``adapterfleet_ragged`` (registered with transformers' ``AttentionInterface``; the
  model's config points at it only for the duration of the call) splits the queries the same way and runs the
  model's own implementation (``sdpa`` or ``eager``) per segment, with a mask made from the segment's 2D mask;
* the decoder runs without the head, and the head runs on the kept positions only, with per-row slots.

Supported where the attention modules follow the Llama pattern (projections, rotary, ``cache.update``, the attention
interface) and the head is a plain projection: :func:`unsupported` names why not otherwise, and the engine then runs
separate forwards. Numbers equal separate forwards' up to float rounding of the differently shaped matmuls.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from adapterfleet.worker.kvcache import cache_arg, joinable
from adapterfleet.worker.lora import LoraModel
from adapterfleet.worker.lora.native import DecodeAttention

__all__ = ["Segment", "forward", "unsupported"]

NAME = "adapterfleet_ragged"
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})  # the Llama attention pattern, a plain head (tested)
INNER = frozenset({"sdpa", "eager"})


@dataclass
class Segment:
    """One batch's part of a fused forward: ``ids`` / ``positions`` [B, C] appended to ``cache``; ``mask`` [B, T] is
    the 2D mask over the cache once they are in (T = cached length + C); ``slots`` per row. ``keep``: return the
    logits of each row's last column."""

    cache: DynamicCache
    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    slots: Sequence[int]
    keep: bool


@dataclass
class _Part:
    segment: Segment
    start: int  # first flat token
    rows: int
    cols: int
    attend: torch.Tensor  # [B, 1, C, T]: bool (sdpa) or additive float (eager)


class _Cache:
    """What the model's attention modules see as their cache: each layer's new keys/values go to the segments'
    caches, and the full keys/values per segment wait for :func:`_attention`."""

    def __init__(self, parts: list[_Part]):
        self.parts = parts
        self.full: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        full = []
        for p in self.parts:  # [1, heads, tokens, dim] -> [B, heads, C, dim]
            k, v = (_split(t, p) for t in (key_states, value_states))
            full.append(p.segment.cache.update(k, v, layer_idx))
        self.full[layer_idx] = full
        return key_states, value_states


_ACTIVE: contextvars.ContextVar[tuple[_Cache, str, DecodeAttention | None] | None] = contextvars.ContextVar(
    "adapterfleet_ragged", default=None)


def _split(t: torch.Tensor, p: _Part) -> torch.Tensor:
    """A segment's tokens of ``t`` [1, heads, tokens, dim] as [B, heads, C, dim]."""
    part = t[0, :, p.start:p.start + p.rows * p.cols]  # [heads, B * C, dim]
    return part.view(t.shape[1], p.rows, p.cols, t.shape[-1]).transpose(0, 1)


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """Each segment's queries against its own cache through the model's own implementation: [1, tokens, heads, dim]."""
    active = _ACTIVE.get()
    if active is None:
        raise RuntimeError(f"the {NAME} attention runs only inside adapterfleet.worker.ragged.forward")
    cache, inner, decode = active
    kwargs.pop("sliding_window", None)  # checked by unsupported(): every context fits the window
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(inner, _eager(module))
    outs = []
    for p, (k, v) in zip(cache.parts, cache.full[_layer(module)], strict=True):
        q = _split(query, p)  # [B, heads, C, dim]
        if p.cols == 1 and decode is not None and decode.takes(q, k, v):  # a decode step's rows: the native kernel
            scale = kwargs.get("scaling")
            outs.append(decode(q[:, :, 0], k, v, p.segment.mask, q.shape[-1] ** -0.5 if scale is None else scale))
            continue
        out, _ = attend(module, q, k, v, p.attend, **kwargs)  # [B, C, heads, dim]
        outs.append(out.reshape(p.rows * p.cols, *out.shape[2:]))
    return torch.cat(outs).unsqueeze(0), None


AttentionInterface.register(NAME, _attention)


def _layer(module: nn.Module) -> int:
    index: Any = module.layer_idx
    return int(index)


def _eager(module: nn.Module) -> Callable:
    """The model's own ``eager_attention_forward`` (each modeling file has its own; the interface holds none)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def unsupported(model: nn.Module, caches: Sequence[DynamicCache], longest: int) -> str | None:
    """Why a fused forward cannot run on ``model`` with these caches and a context of ``longest`` positions, or
    None when it can."""
    config: Any = model.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {sorted(MODEL_TYPES)}"
    inner = _implementation_of(config)
    if inner not in INNER:
        return f"attention implementation {inner!r} is not one of {sorted(INNER)}"
    window = getattr(config, "sliding_window", None)
    if window is not None and longest > window:
        return f"a context of {longest} positions is longer than the sliding window ({window})"
    if not all(joinable(c) for c in caches):
        return "a cache is not made of plain dynamic layers"
    return None


def forward(model: nn.Module, lora: LoraModel, segments: Sequence[Segment],
            decode: DecodeAttention | None = None) -> list[torch.Tensor | None]:
    """One forward over all ``segments``' tokens (their caches grow by their columns): per segment, the logits of
    each row's last column [B, V] (float32) if it keeps them, else None. ``decode``: the native kernel for segments
    of one column (a decode step's rows), where it takes their tensors. The caller checked :func:`unsupported`."""
    config: Any = model.config
    inner = _implementation_of(config)
    causal_lm = cast(PreTrainedModel, model)
    parts, start = [], 0
    for s in segments:
        rows, cols = s.ids.shape
        parts.append(_Part(s, start, rows, cols, _mask(s.mask, cols, inner, causal_lm.dtype)))
        start += rows * cols
    ids = torch.cat([s.ids.reshape(-1) for s in segments]).unsqueeze(0)  # [1, tokens]
    positions = torch.cat([s.positions.reshape(-1) for s in segments]).unsqueeze(0)  # [1, tokens]
    slots = [slot for p in parts for slot in p.segment.slots for _ in range(p.cols)]
    cache = _Cache(parts)
    decoder = causal_lm.get_decoder()
    with _implementation(config, NAME), _active(cache, inner, decode), lora.rows(slots, flat=True):
        hidden = decoder(input_ids=ids, position_ids=positions, use_cache=True,
                         **{cache_arg(decoder): cache}).last_hidden_state  # [1, tokens, hidden]
    kept = [p for p in parts if p.segment.keep]
    if not kept:
        return [None] * len(parts)
    index = torch.cat([p.start + p.cols - 1 + p.cols * torch.arange(p.rows) for p in kept]).to(hidden.device)
    with lora.rows([slot for p in kept for slot in p.segment.slots]):
        logits = causal_lm.get_output_embeddings()(hidden[0].index_select(0, index).unsqueeze(1))[:, -1].float()
    out: list[torch.Tensor | None] = []
    for p in parts:
        if p.segment.keep:
            out.append(logits[:p.rows])
            logits = logits[p.rows:]
        else:
            out.append(None)
    return out


def _mask(mask: torch.Tensor, cols: int, inner: str, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] -> [B, 1, C, T]: query column i (position T - C + i) sees the unmasked keys up to itself, and always
    itself (a left-padding query attends to something: no NaN reaches its keys/values in later layers)."""
    total = mask.shape[1]
    query = torch.arange(total - cols, total, device=mask.device).unsqueeze(1)  # [C, 1]
    key = torch.arange(total, device=mask.device).unsqueeze(0)  # [1, T]
    allowed = (mask.bool().unsqueeze(1) & (key <= query)) | (key == query)  # [B, C, T]
    allowed = allowed.unsqueeze(1)
    if inner == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def _implementation_of(config) -> str:
    return config._attn_implementation  # noqa: SLF001 - transformers has no public name for it


@contextmanager
def _implementation(config, name: str) -> Iterator[None]:
    """The model's attention modules read the implementation from the shared config at every call: it points at the
    ragged one for the duration of the forward (on the engine's thread, the only one running forwards)."""
    previous = _implementation_of(config)
    config._attn_implementation = name  # noqa: SLF001 - its setter also sets the sub-configs'
    try:
        yield
    finally:
        config._attn_implementation = previous  # noqa: SLF001


@contextmanager
def _active(cache: _Cache, inner: str, decode: DecodeAttention | None) -> Iterator[None]:
    token = _ACTIVE.set((cache, inner, decode))
    try:
        yield
    finally:
        _ACTIVE.reset(token)
