"""Log-probabilities of the generated tokens and the most likely alternatives, from the model's own logits.

Reported before temperature, top-k/top-p and penalties (vLLM's default, "raw logprobs"): the numbers say what the
model (base + adapter) thinks, whatever the sampling settings; ``log_softmax`` over the whole vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Logprob:
    token_id: int
    logprob: float
    text: str = ""  # filled in by the service (the engine has no tokenizer)


@dataclass(frozen=True)
class TokenLogprobs:
    chosen: Logprob
    top: tuple[Logprob, ...] = ()  # most likely first


def token_logprobs(logits: torch.Tensor, chosen: list[int], top: list[int]) -> list[TokenLogprobs]:
    """``logits``: [rows, vocab] float32; ``chosen[i]``: row i's token; ``top[i]``: how many alternatives it wants."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)                                    # [R, V]
    picked = logprobs.gather(-1, torch.tensor(chosen, device=logits.device).unsqueeze(-1))  # [R, 1]
    k = min(max(top, default=0), logits.shape[-1])
    best = torch.topk(logprobs, k, dim=-1) if k else None                                    # [R, k]
    picked_list = picked.squeeze(-1).tolist()
    values = best.values.tolist() if best is not None else [[] for _ in chosen]
    ids = best.indices.tolist() if best is not None else [[] for _ in chosen]
    return [TokenLogprobs(Logprob(tok, lp), tuple(Logprob(i, v) for i, v in zip(ids[r][:n], values[r][:n],
                                                                                  strict=True)))
            for r, (tok, lp, n) in enumerate(zip(chosen, picked_list, top, strict=True))]
