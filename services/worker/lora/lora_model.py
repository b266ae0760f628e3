"""One loaded base model serving many LoRA adapters at once, one adapter per slot.

    lm = LoraModel(model, max_slots=8)           # model: a loaded transformers causal LM, on its device
    lm.install(0, AdapterWeights.from_dir(d))    # checks fit (Incompatible), wraps modules, copies weights in
    with lm.rows([0, -1, 0]):                    # row b of the batch uses slot rows[b]; -1 = base model
        logits = model(input_ids).logits         # or model.generate(...): every forward of the block
    lm.remove(0)                                 # frees the slot's tensors

Slots are the cache's business: this class only refuses to overwrite an occupied slot. Installs and removals are
serialised by a lock and swap each wrapper's tensors whole, so forwards on other slots may run meanwhile; the
caller must not remove a slot that an in-flight forward uses.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from adapterfleet.store.lru import Lru

from .base import SlotWrapper
from .compat import COPY, check_compatible
from .context import NO_ADAPTER, RowContext, Rows
from .inject import Wrapper, inject, wrappers
from .modules_to_save import ModuleSwitch, clone_module
from .native import LowRankKernel
from .slot_stack import SlotStack, Write, write_all
from .weights import AdapterWeights

FITS_KEPT = 64  # distinct adapter layouts whose fit is remembered


class LoraModel:
    def __init__(self, model: nn.Module, *, max_slots: int):
        self.model = model
        self.ctx = RowContext(max_slots)
        self._slots: dict[int, list[Wrapper]] = {}  # slot -> the wrappers that hold its tensors
        self._lock = threading.Lock()
        self._fits: Lru[dict[str, str]] = Lru(FITS_KEPT)  # shapes key -> plan of weights that fit (check)
        self._wrappers: dict[tuple[str, str], Wrapper] = {}  # (module path, kind) -> the wrapper placed there

    def use_kernel(self, kernel: LowRankKernel | None) -> None:
        """Run the decode steps' low-rank terms through ``kernel`` (:mod:`.native`) from the next wrapper on; None:
        torch's ops."""
        self.ctx.low_rank = kernel

    @property
    def max_slots(self) -> int:
        return self.ctx.max_slots

    @property
    def installed(self) -> frozenset[int]:
        return frozenset(self._slots)

    def rows(self, slots: Sequence[int] | torch.Tensor, flat: bool = False) -> AbstractContextManager[Rows]:
        """Context manager: forwards inside run row b on adapter slot ``slots[b]`` (-1: the base model). ``flat``:
        the slots are per token of a one-row forward of several sequences' tokens (:class:`.context.Rows`).

        A slot that holds no adapter is refused (ValueError) rather than silently served by the base model.
        """
        if isinstance(slots, torch.Tensor):
            slots = slots.tolist()
        empty = sorted({s for s in slots if s != NO_ADAPTER and s not in self._slots})
        if empty:
            raise ValueError(f"slots {empty} hold no adapter; install one there or use -1 for the base model")
        return self.ctx.rows(slots, flat)

    def check(self, weights: AdapterWeights, shapes: Hashable = None) -> dict[str, str]:
        """Raise Incompatible unless ``weights`` fits this model; return module path -> wrapper kind.

        ``shapes``: a key that fixes every name and shape of ``weights`` (the worker passes its config and
        safetensors header bytes). Weights with a key that fit before, and whose fit depends on shapes alone, are
        not walked again: a worker's adapters mostly share one layout, and the walk over every module is ~0.5 ms
        of each cold load."""
        memo = shapes is not None and weights.shapes_decide_fit
        plan = self._fits.get(shapes) if memo else None
        if plan is None:
            plan = check_compatible(self.model, weights)
            if memo:
                self._fits.put(shapes, plan)
        weights.fit = (self.model, plan)
        return plan

    def install(self, slot: int, weights: AdapterWeights) -> None:
        """Put ``weights`` into ``slot``. On any error the model serves exactly what it served before."""
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} is out of range 0..{self.max_slots - 1}")
        with self._lock:
            if slot in self._slots:
                raise ValueError(f"slot {slot} is occupied; remove its adapter first")
            fit = weights.fit
            plan = fit[1] if fit is not None and fit[0] is self.model else check_compatible(self.model, weights)
            placed = self._placed(plan)
            # compute everything first and publish last, so a failure leaves no half-installed adapter: every
            # module's new stack and the writes that fill its row, then the writes (all at once), then the stacks
            switches: list[tuple[ModuleSwitch, nn.Module]] = []  # modules saved whole: (switch, this slot's copy)
            stacks: list[tuple[SlotWrapper, SlotStack]] = []
            writes: list[Write] = []
            for path, kind in plan.items():
                w = placed[path]
                if kind == COPY:
                    assert isinstance(w, ModuleSwitch), "inject places a ModuleSwitch at a 'copy' path"
                    switches.append((w, clone_module(w.base_layer, weights.copies[path])))
                else:
                    assert isinstance(w, SlotWrapper), "inject places a per-row LoRA / bias wrapper elsewhere"
                    entries, rank = w.prepare(weights.modules[path])
                    stack, fills = w.grown(slot, entries, rank)
                    stacks.append((w, stack))
                    writes += fills
            write_all(writes)
            done: list[Wrapper] = []
            try:
                for switch, copy in switches:
                    switch.add(slot, copy)
                    done.append(switch)
            except BaseException:
                for w in done:
                    w.remove(slot)
                raise
            for w, stack in stacks:
                w.publish(stack)
                done.append(w)
            self._slots[slot] = done

    def _placed(self, plan: dict[str, str]) -> dict[str, Wrapper]:
        """The wrapper of each planned module, wrapping those not wrapped yet. Only this class wraps the model and
        a wrapper, once placed, stays where it is (a module saved whole later goes around it), so the ones found
        before are remembered by path and kind: no walk down the module tree for each of them on every install."""
        placed: dict[str, Wrapper] = {}
        missing: dict[str, str] = {}
        for path, kind in plan.items():
            w = self._wrappers.get((path, kind))
            if w is None:
                missing[path] = kind
            else:
                placed[path] = w
        if missing:
            for path, w in inject(self.model, missing, self.ctx).items():
                self._wrappers[(path, missing[path])] = placed[path] = w
        return placed

    def remove(self, slot: int) -> None:
        """Take the adapter out of ``slot`` and release its tensors (no-op if the slot is empty)."""
        with self._lock:
            for w in self._slots.pop(slot, ()):
                w.remove(slot)

    def nbytes(self) -> int:
        """Bytes held for installed adapters (stacked LoRA tensors and module copies)."""
        return sum(w.nbytes() for w in wrappers(self.model).values())

    def slot_modules(self, slot: int) -> list[str]:
        """Module paths that ``slot``'s adapter changes."""
        held = {id(w) for w in self._slots.get(slot, ())}
        return sorted(p for p, w in wrappers(self.model).items() if id(w) in held)

