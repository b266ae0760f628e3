"""What the engine is asked to do (a generation, a scoring) and a generation's state while it is in a batch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adapterfleet.worker.logprobs import TokenLogprobs
from adapterfleet.worker.penalties import History
from adapterfleet.worker.sampling import Sampling

# (new token ids, finished, finish reason, the new token's logprobs when asked for)
Emit = Callable[[list[int], bool, str, TokenLogprobs | None], None]


@dataclass
class GenerateJob:
    prompt_ids: list[int]  # the prompt, then any earlier output (resume_ids) at its end
    slot: int
    max_new_tokens: int
    sampling: Sampling
    stop_ids: frozenset[int]
    emit: Emit
    fail: Callable[[BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    top_logprobs: int = -1  # -1: no logprobs; n >= 0: logprobs with the n most likely alternatives
    resumed: int = 0        # how many of prompt_ids are earlier output (penalties count them as generated)
    settled: bool = False   # finished or failed: the engine sends nothing more

    def finish(self, tokens: list[int], reason: str, logprobs: TokenLogprobs | None) -> None:
        self.settled = True
        self.emit(tokens, True, reason, logprobs)

    def reject(self, exc: BaseException) -> None:
        if not self.settled:
            self.settled = True
            self.fail(exc)


@dataclass
class ScoreJob:
    token_ids: list[int]
    slot: int
    done: Callable[[list[float] | BaseException], None]


@dataclass
class Row:
    """A generation in the running batch."""

    job: GenerateJob
    generator: torch.Generator | None
    history: History | None  # only rows with penalties keep one
    produced: int = 0

    @classmethod
    def start(cls, job: GenerateJob) -> Row:
        history = None
        if job.sampling.penalized:
            split = len(job.prompt_ids) - job.resumed
            history = History(job.prompt_ids[:split], job.prompt_ids[split:])
        return cls(job, job.sampling.generator(), history)
