"""One decode step's choice for every row of a batch: check, penalise, sample, report logprobs.

A row whose logits are not finite, or whose penalties or sampling raise, gets an error instead of a token; every
other row gets exactly the token it would get alone. Greedy rows without penalties take one batched argmax over
the raw logits (bit-for-bit what PEFT's greedy ``generate`` picks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.worker.isolation import non_finite, row_error
from adapterfleet.worker.jobs import Row
from adapterfleet.worker.logprobs import TokenLogprobs, token_logprobs
from adapterfleet.worker.penalties import penalize
from adapterfleet.worker.sampling import sample_row


@dataclass(frozen=True)
class Choice:
    token: int
    logprobs: TokenLogprobs | None = None


def finite_rows(logits: torch.Tensor) -> list[bool]:
    """``logits``: [B, V] -> per row: no NaN, no +inf, and at least one finite value."""
    ok = torch.isfinite(logits.sum(-1))  # [B]; a NaN or +inf anywhere, or all -inf, makes the sum so: one pass
    if bool(ok.all()):
        return ok.tolist()
    # the exact test where the sum was not finite (a -inf among finite values, or a sum that overflowed, is fine)
    bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | torch.isneginf(logits).all(-1)  # [B]
    return (~bad).tolist()


def choose(rows: list[Row], logits: torch.Tensor) -> list[Choice | AdapterFleetError]:
    """``logits``: [B, V] float32, row b for ``rows[b]``."""
    out: list[Choice | AdapterFleetError | None] = [None] * len(rows)
    ok = finite_rows(logits)
    scores = logits
    for b, row in enumerate(rows):
        if not ok[b]:
            out[b] = non_finite(row.produced)
        elif row.history is not None:
            if scores is logits:
                scores = logits.clone()
            try:
                scores[b] = penalize(logits[b], row.job.sampling, row.history)
            except Exception as exc:  # noqa: BLE001 - this row fails, the others go on
                out[b] = row_error(exc, "penalties")
    greedy = torch.argmax(scores, dim=-1).tolist()
    tokens: list[int] = []
    for b, row in enumerate(rows):
        if out[b] is not None:
            tokens.append(-1)
            continue
        try:
            token = greedy[b] if row.job.sampling.greedy else sample_row(scores[b], row.job.sampling, row.generator)
        except Exception as exc:  # noqa: BLE001 - this row fails, the others go on
            out[b] = row_error(exc, "sampling")
            token = -1
        tokens.append(token)
    wanted = [b for b, row in enumerate(rows) if out[b] is None and row.job.top_logprobs >= 0]
    reported: dict[int, TokenLogprobs] = {}
    if wanted:
        found = token_logprobs(logits[wanted], [tokens[b] for b in wanted], [rows[b].job.top_logprobs for b in wanted])
        reported = dict(zip(wanted, found, strict=True))
    for b, row in enumerate(rows):
        if out[b] is None:
            if row.history is not None:
                row.history.add(tokens[b])
            out[b] = Choice(tokens[b], reported.get(b))
    return [c for c in out if c is not None]
