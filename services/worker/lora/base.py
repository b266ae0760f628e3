"""What every per-row wrapper shares: the wrapped module, the row context, and the immutable slot stack."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .context import RowContext
from .plan import RowPlan, plan_for
from .slot_stack import Entry, Field, SlotStack, Write
from .weights import ModuleLora


def module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


def optional_module_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>``: a parameter or buffer, or None where the module registered it as None (a Linear built
    with ``bias=False``).

    torch types ``nn.Module.__getattr__`` as ``Tensor | Module`` and a module's parameters by their first assignment
    (``nn.Linear.bias: Parameter``), so its stubs say neither that the attribute is a tensor nor that it may be None.
    """
    t = getattr(module, name)
    if t is not None and not isinstance(t, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is a {type(t).__name__}, not a tensor")
    return t


def module_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>``: a parameter or buffer that the module must have (e.g. a Linear's weight)."""
    t = optional_module_tensor(module, name)
    if t is None:
        raise TypeError(f"{type(module).__name__}.{name} is None, not a tensor")
    return t


class SlotWrapper(nn.Module):
    """Base of the wrappers that add a per-row term to ``base_layer``'s output.

    Subclasses declare ``FIELDS`` (the stacked tensors) and implement ``prepare`` (per-adapter weights -> per-slot
    entries) and ``forward``. The wrapped module stays at ``self.base_layer``, so state dicts of the base model keep
    working under ``<path>.base_layer.*``.
    """

    FIELDS: ClassVar[dict[str, Field]] = {}

    def __init__(self, base_layer: nn.Module, ctx: RowContext):
        super().__init__()
        self.base_layer = base_layer
        self.ctx = ctx
        # swapped whole by add/remove (callers serialise writes); a forward reads it once
        self._stack = SlotStack(self.FIELDS, ctx.max_slots, module_device(base_layer))

    @property
    def slots(self) -> frozenset[int]:
        return self._stack.slots

    def nbytes(self) -> int:
        return self._stack.nbytes()

    def prepare(self, m: ModuleLora) -> tuple[dict[str, Entry | None], int]:
        """Per-slot stack entries (field -> entry, None: field not used) and the rank of one adapter's change here."""
        raise NotImplementedError

    def add(self, slot: int, entries: dict[str, Entry | None], rank: int) -> None:
        self._stack = self._stack.added(slot, entries, rank)

    def grown(self, slot: int, entries: dict[str, Entry | None], rank: int) -> tuple[SlotStack, list[Write]]:
        """:meth:`add` in steps (:meth:`.SlotStack.grown`): the stack to :meth:`publish` once its writes are made."""
        return self._stack.grown(slot, entries, rank)

    def publish(self, stack: SlotStack) -> None:
        """Serve ``stack`` from the next forward on (one from :meth:`grown`, every write made). Straight into the
        instance dict: nn.Module's ``__setattr__`` looks the name up in three registries first, ~10 us a call on
        the 2-core box, and an install publishes a stack for every module its adapter changes."""
        self.__dict__["_stack"] = stack

    def remove(self, slot: int) -> None:
        self._stack = self._stack.removed(slot)

    def _per_token(self, x: torch.Tensor, *args, feature_dims: int = 1, **kwargs) -> torch.Tensor | None:
        """This wrapper's forward with one row per token when the current rows are per token (a fused step), else
        None."""
        rows = self.ctx.current()
        return None if rows is None else rows.per_token(self.forward, x, feature_dims, *args, **kwargs)

    def _plan(self, stack: SlotStack, batch: int, device: torch.device) -> RowPlan | None:
        """The current rows' plan for ``stack``, or None when no row uses this module."""
        return plan_for(self.ctx.current(), stack, batch, device)

    def _local_rows(self, stack: SlotStack, batch: int, device: torch.device) -> torch.Tensor | None:
        """Local stack row per batch row (0 = no adapter here), or None when no row uses this module.  # [batch]"""
        plan = self._plan(stack, batch, device)
        return None if plan is None else plan.local

    def base(self) -> nn.Module:
        """``self.base_layer`` without nn.Module's ``__getattr__``, which costs ~2 us a call on the 2-core box; a
        forward of every wrapper asks."""
        base = self._modules["base_layer"]
        assert base is not None, "a wrapper always holds its base layer"
        return base

    def unwrapped(self) -> nn.Module:
        return self.base_layer

    def extra_repr(self) -> str:
        stack = self._stack
        return f"slots={sorted(stack.slots)}, max_rank={stack.rank}"
