"""Repetition, presence and frequency penalties on one row's logits.

- ``repetition_penalty`` follows transformers' ``RepetitionPenaltyLogitsProcessor``: every token id present in the
  prompt or the output so far has its logit divided by the penalty when positive, multiplied when negative.
- ``presence_penalty`` / ``frequency_penalty`` follow OpenAI: ``logit[t] -= presence * (count[t] > 0) +
  frequency * count[t]``, counting the generated tokens only (a resumed stream's ``resume_ids`` count as generated).

Applied in that order, before temperature, top-k and top-p (as vLLM does). Logprobs are reported from the raw
logits, before any of this.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adapterfleet.worker.sampling import Sampling


class History:
    """What one row has seen: counts of generated tokens and a mask of every token in prompt + output.

    Allocated on the first step (the logits' vocabulary and device are known then). Ids outside the logits'
    vocabulary (an embedding larger than the output layer) are not counted: they have no logit to penalise.
    """

    def __init__(self, prompt_ids: Sequence[int], generated_ids: Sequence[int]):
        self._prompt = list(prompt_ids)
        self._generated = list(generated_ids)
        self.counts: torch.Tensor | None = None  # [vocab] float32: occurrences in the output
        self.seen: torch.Tensor | None = None    # [vocab] bool: in the prompt or the output

    def _init(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        generated = torch.tensor([t for t in self._generated if t < vocab], dtype=torch.long, device=device)
        counts.index_add_(0, generated, torch.ones_like(generated, dtype=torch.float32))
        everything = torch.tensor([t for t in self._prompt + self._generated if t < vocab], dtype=torch.long,
                                  device=device)
        seen[everything] = True
        self.counts, self.seen = counts, seen
        return counts, seen

    def tensors(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.counts is None or self.seen is None:
            return self._init(vocab, device)
        return self.counts, self.seen

    def add(self, token: int) -> None:
        if self.counts is None or self.seen is None:
            self._generated.append(token)
        elif token < self.counts.shape[0]:
            self.counts[token] += 1
            self.seen[token] = True


def penalize(logits: torch.Tensor, params: Sampling, history: History) -> torch.Tensor:
    """``logits``: [vocab] float32 of one row -> a penalised copy."""
    counts, seen = history.tensors(logits.shape[-1], logits.device)
    out = logits
    if params.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        out = torch.where(seen, penalised, out)
    if params.frequency_penalty != 0.0:
        out = out - params.frequency_penalty * counts
    if params.presence_penalty != 0.0:
        out = out - params.presence_penalty * (counts > 0).to(out.dtype)
    return out
