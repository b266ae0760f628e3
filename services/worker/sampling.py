"""Next-token choice per row: greedy, or temperature / top-k / top-p with a per-request seed.

Temperatures below :data:`GREEDY_BELOW` are greedy (vLLM's convention): dividing float32 logits by 1e-40 would
overflow to inf and turn the softmax into NaN, and such a temperature means "argmax" anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 (or below GREEDY_BELOW): greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0  # transformers' semantics (prompt + output); 1: off
    presence_penalty: float = 0.0    # OpenAI's semantics (output only); 0: off
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def generator(self) -> torch.Generator | None:
        if self.greedy:
            return None
        g = torch.Generator()
        if self.seed is not None:
            g.manual_seed(self.seed)
        else:
            g.seed()
        return g


def sample_row(logits: torch.Tensor, params: Sampling, generator: torch.Generator | None) -> int:
    """``logits``: [vocab] float32 for one row (finite, penalties already applied)."""
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, scores.shape[-1])
        kth = torch.topk(scores, k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if 0.0 < params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_scores, dim=-1) >= params.top_p  # keep the smallest set reaching top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
