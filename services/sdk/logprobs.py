"""Log-probabilities of generated tokens as the SDK returns them (``logprobs=True`` on generate / stream)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from adapterfleet.v1 import worker_pb2


@dataclass(frozen=True)
class Logprob:
    token_id: int
    logprob: float  # log_softmax of the model's logits at that step (before temperature and penalties)
    text: str       # the token decoded on its own


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token (``chosen``) and the ``top_logprobs`` most likely tokens at its step."""

    chosen: Logprob
    top: tuple[Logprob, ...] = ()


def logprobs_of(pbs: Iterable[worker_pb2.TokenLogprobs]) -> tuple[TokenLogprobs, ...]:
    def one(pb: worker_pb2.Logprob) -> Logprob:
        return Logprob(pb.token_id, pb.logprob, pb.text)

    return tuple(TokenLogprobs(one(pb.chosen), tuple(one(t) for t in pb.top)) for pb in pbs)
