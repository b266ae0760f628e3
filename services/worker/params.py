"""A generation request as the worker's domain sees it (no generated stubs)."""

from __future__ import annotations

from dataclasses import dataclass

from adapterfleet.worker.sampling import Sampling


@dataclass(frozen=True)
class GenerateParams:
    adapter: str = ""
    prompt: str = ""
    prompt_ids: tuple[int, ...] = ()
    max_new_tokens: int = 16
    sampling: Sampling = Sampling()
    stop_ids: tuple[int, ...] = ()
    routing_key: str = ""
    resume_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()  # stop strings, matched on the decoded text
    logprobs: bool = False
    top_logprobs: int = 0
