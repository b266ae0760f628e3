"""The served model's output head gets a contiguous input: the engine's last-position slice would otherwise make
``F.linear`` broadcast the head's weight across the batch (a bmm reading it once per row)."""

from __future__ import annotations

import torch

from adapterfleet.worker.model_host import ModelHost
from tests.helpers.models import make_base_model


def test_the_head_sees_a_contiguous_input_and_the_logits_are_unchanged(tmp_path):
    host = ModelHost.load(make_base_model("llama", tmp_path / "base", seed=0))
    model = host.model
    seen: list[bool] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(1, host.vocab, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        last = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
        handle.remove()
        full = model(input_ids=ids).logits[:, -1]
    assert seen == [True]
    torch.testing.assert_close(last, full)
