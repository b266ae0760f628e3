"""Per-row choice of a whole module (PEFT ``modules_to_save``, e.g. ``lm_head`` or ``score``).

A row whose adapter saved its own copy of the module runs that copy; every other row runs the wrapped module.
Copies are full matrices (a head is [vocab, hidden]), so gathering a weight per row would cost batch x the head;
instead each copy runs once on the rows that use it, one call per *distinct adapter in the batch that has a copy of
this module* (as PEFT's mixed batch does), never per installed adapter.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .base import module_tensor
from .context import RowContext


@runtime_checkable
class Unwrappable(Protocol):
    """A per-row wrapper (:class:`.base.SlotWrapper`, :class:`ModuleSwitch`): has the module it wraps."""

    def unwrapped(self) -> nn.Module: ...


def is_wrapper(module: nn.Module) -> bool:
    """``isinstance(module, Unwrappable)`` at a class attribute lookup's cost (a runtime-checkable Protocol's
    isinstance costs ~50 us, and an install resolves every targeted module path through it)."""
    return callable(getattr(type(module), "unwrapped", None))


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under any per-row wrappers."""
    while is_wrapper(module):
        module = module.unwrapped()  # type: ignore[operator]
    return module


def plain_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and buffers of ``module`` by the names they have without per-row wrappers."""
    module = unwrap(module)
    # torch's own registries: named_parameters() would look through the wrappers this function must see past
    out = {prefix + n: t for n, t in (*module._parameters.items(), *module._buffers.items())  # noqa: SLF001
           if t is not None}
    for name, child in module._modules.items():  # noqa: SLF001
        if child is not None:
            out.update(plain_tensors(child, f"{prefix}{name}."))
    return out


def clone_module(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``module`` (without per-row wrappers) whose tensors named in ``state`` are the given ones.

    Tensors not in ``state`` stay shared with the base module, so a copy costs only the adapter's own tensors.
    """
    module = unwrap(module)
    memo: dict[int, object] = {}
    for t in (*module.parameters(), *module.buffers()):
        memo[id(t)] = t  # share, do not copy
    for sub in module.modules():
        if sub is not module and is_wrapper(sub):
            memo[id(sub)] = clone_module(sub, {})  # a wrapper inside: the copy gets the plain module
    clone = copy.deepcopy(module, memo)
    for name, tensor in state.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = clone.get_submodule(owner_name) if owner_name else clone
        old = getattr(owner, leaf)
        value = tensor.to(device=old.device, dtype=old.dtype)
        if leaf in owner._parameters:  # noqa: SLF001 - replace in place, keeping registration order
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)  # noqa: SLF001
        else:
            owner._buffers[leaf] = value  # noqa: SLF001
    return clone.eval()


class ModuleSwitch(nn.Module):
    def __init__(self, base_layer: nn.Module, ctx: RowContext):
        super().__init__()
        self.base_layer = base_layer
        self.ctx = ctx
        self._copies: dict[int, nn.Module] = {}  # slot -> copy; swapped whole by add/remove

    @property
    def slots(self) -> frozenset[int]:
        return frozenset(self._copies)

    @property
    def weight(self) -> torch.Tensor:
        return module_tensor(unwrap(self.base_layer), "weight")

    def unwrapped(self) -> nn.Module:
        return self.base_layer

    def nbytes(self) -> int:
        base = {id(t) for t in unwrap(self.base_layer).parameters()}
        return sum(
            t.nbytes for c in self._copies.values() for t in (*c.parameters(), *c.buffers()) if id(t) not in base
        )

    def add(self, slot: int, module_copy: nn.Module) -> None:
        if slot in self._copies:
            raise ValueError(f"slot {slot} already holds a copy of this module")
        self._copies = {**self._copies, slot: module_copy}

    def remove(self, slot: int) -> None:
        if slot in self._copies:
            self._copies = {s: c for s, c in self._copies.items() if s != slot}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        copies, rows = self._copies, self.ctx.current()
        if rows is None or not copies:
            return self.base_layer(x, *args, **kwargs)
        features = 1 if torch.is_floating_point(x) else 0  # an embedding's ids have none
        if (y := rows.per_token(self.forward, x, features, *args, **kwargs)) is not None:  # a fused step
            return y
        y = self.base_layer(x, *args, **kwargs)
        for slot in sorted(rows.present.intersection(copies)):
            idx = rows.rows_of(slot, x.shape[0], x.device)  # [rows]
            sub = copies[slot](x.index_select(0, idx), *args, **kwargs)  # [rows, ...]
            y = y.index_copy(0, idx, sub.to(y.dtype))
        return y

    def extra_repr(self) -> str:
        return f"copies for slots={sorted(self._copies)}"
