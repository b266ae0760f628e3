"""An install grows every module's stack, makes all its writes, and only then publishes: one that fails at any
point (a write, or the copy of a module saved whole) leaves every wrapper serving exactly the stack it served
before, and the slot free for a later install that serves the right numbers."""

from __future__ import annotations

import pytest
import torch

from adapterfleet.worker.lora import AdapterWeights, LoraModel, slot_stack, wrappers
from adapterfleet.worker.lora.modules_to_save import ModuleSwitch
from tests.helpers.models import load_base_model

IDS = torch.arange(5, 29).view(3, 8)  # [batch, seq]


def _logits(lm: LoraModel, rows: list[int]) -> torch.Tensor:
    with torch.no_grad(), lm.rows(rows):
        return lm.model(input_ids=IDS).logits


def _stacks(lm: LoraModel) -> dict[str, object]:
    return {path: w.__dict__.get("_stack", w) for path, w in wrappers(lm.model).items()}


@pytest.mark.parametrize("fail", ["write", "module copy"])
def test_a_failed_install_publishes_nothing_and_the_slot_installs_later(zoo, monkeypatch, fail):
    llama = zoo.base("llama")
    lm = LoraModel(load_base_model(llama), max_slots=3)
    lm.install(0, AdapterWeights.from_dir(zoo.adapter("llama", "plain")))
    second = AdapterWeights.from_dir(zoo.adapter("llama", "modules_to_save"))
    lm.install(2, second)  # every wrapper the failing adapter needs is placed: the failure is in the install itself
    lm.remove(2)
    served = _logits(lm, [0, -1, 0])
    stacks = _stacks(lm)
    calls = []
    if fail == "write":
        real = slot_stack.Write.run

        def run(self):
            calls.append(1)
            if len(calls) == 5:  # midway: four rows written, past every published view
                raise RuntimeError("disk on fire")
            real(self)

        monkeypatch.setattr(slot_stack.Write, "run", run)
    else:
        def add(self, slot, copy):
            calls.append(1)
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(ModuleSwitch, "add", add)
    with pytest.raises(RuntimeError, match="disk on fire"):
        lm.install(1, AdapterWeights.from_dir(zoo.adapter("llama", "modules_to_save")))
    assert calls and lm.installed == frozenset({0})
    assert _stacks(lm) == stacks  # the very same stack objects: nothing was published
    assert torch.equal(_logits(lm, [0, -1, 0]), served)
    monkeypatch.undo()
    lm.install(1, AdapterWeights.from_dir(zoo.adapter("llama", "modules_to_save")))
    fresh = LoraModel(load_base_model(llama), max_slots=3)
    fresh.install(0, AdapterWeights.from_dir(zoo.adapter("llama", "modules_to_save")))
    mixed = _logits(lm, [0, -1, 1])  # the slot that failed, beside the adapter that stayed and the base model
    assert torch.allclose(mixed[2], _logits(fresh, [-1, -1, 0])[2], atol=1e-5)
    assert torch.allclose(mixed[:2], served[:2], atol=1e-5)
