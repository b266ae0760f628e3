"""OpenAI requests -> GenerateRequests, and Generate's answers -> OpenAI's JSON (whole responses and stream chunks).

One OpenAI request becomes ``len(prompts) x n`` GenerateRequests; choice ``i`` is prompt ``i // n``. With a seed,
choice ``j`` of a prompt samples with ``seed + j``, so the choices differ and a request is still reproducible.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from adapterfleet.router.http.errors import BadParam
from adapterfleet.router.http.schemas import DEFAULT_MAX_TOKENS, ChatCompletionRequest, CompletionRequest, _Sampling
from adapterfleet.v1 import worker_pb2

_U64 = 2**64
# characters (or token ids) of prompt over all of a request's Generates: each choice carries its prompt, so n copies
# of a 16 MiB body would be 256 MiB in the router before any worker refused them
MAX_FANOUT_PROMPT = 16 << 20

def generate_requests(req: _Sampling, adapter: str, prompts: list[str | list[int]]) -> list[worker_pb2.GenerateRequest]:
    """The GenerateRequests of one OpenAI request: ``n`` per prompt, prompt-major."""
    total = req.n * sum(len(p) for p in prompts)
    if total > MAX_FANOUT_PROMPT:
        raise BadParam(f"the prompts times n come to {total} characters or token ids, more than the limit of "
                       f"{MAX_FANOUT_PROMPT}; send fewer or shorter prompts, or a smaller n", "n")
    sampling = worker_pb2.SamplingParams(  # OpenAI's default temperature is 1; a 0 below means "off"
        temperature=1.0 if req.temperature is None else req.temperature, top_p=req.top_p or 0.0, top_k=req.top_k or 0,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=req.repetition_penalty or 0.0)
    base = worker_pb2.GenerateRequest(adapter=adapter, max_new_tokens=_max_tokens(req), sampling=sampling,
                                      routing_key=req.user or "")
    base.stop.extend(req.stops)
    base.logprobs, base.top_logprobs = _logprobs(req)
    out = []
    for prompt in prompts:
        for j in range(req.n):
            one = worker_pb2.GenerateRequest()
            one.CopyFrom(base)
            if isinstance(prompt, str):
                one.prompt = prompt
            else:
                one.prompt_ids.extend(prompt)
            if req.seed is not None:
                one.sampling.seed, one.sampling.has_seed = (req.seed + j) % _U64, True
            out.append(one)
    return out


def _max_tokens(req: _Sampling) -> int:
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens
    return req.max_tokens or DEFAULT_MAX_TOKENS


def _logprobs(req: _Sampling) -> tuple[bool, int]:
    if isinstance(req, CompletionRequest):
        return req.logprobs is not None, req.logprobs or 0
    assert isinstance(req, ChatCompletionRequest)
    return req.logprobs, req.top_logprobs or 0


# --- answers ----------------------------------------------------------------------------------------------------------
@dataclass
class Choice:
    """One choice as its messages arrive."""

    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    adapter_key: str = ""
    logprobs: list[worker_pb2.TokenLogprobs] = field(default_factory=list)

    def add(self, msg: worker_pb2.GenerateResponse) -> None:
        self.text += msg.text
        self.tokens = max(self.tokens + len(msg.token_ids), msg.completion_tokens)
        self.prompt_tokens = self.prompt_tokens or msg.prompt_tokens
        self.adapter_key = self.adapter_key or msg.adapter_key
        self.logprobs.extend(msg.logprobs)
        if msg.finished:
            self.finish_reason = msg.finish_reason or "stop"


def usage(choices: list[Choice], n: int) -> dict[str, int]:
    """OpenAI counts a prompt once however many choices it has."""
    prompt = sum(c.prompt_tokens for c in choices if c.index % n == 0)
    completion = sum(c.tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Responder:
    """Builds one request's OpenAI objects (same id and time in every chunk)."""

    def __init__(self, chat: bool, model: str, want_logprobs: bool):
        self.chat, self.model, self.want_logprobs = chat, model, want_logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def response(self, choices: list[Choice], n: int) -> dict:
        key = next((c.adapter_key for c in choices if c.adapter_key), "")
        out = self._head(chunk=False)
        out["system_fingerprint"] = key or None  # the adapter version that answered (name@sha256:...)
        out["choices"] = [self._choice(c) for c in choices]
        out["usage"] = usage(choices, n)
        return out

    def _choice(self, c: Choice) -> dict:
        lp = self._logprobs(c.logprobs, 0) if self.want_logprobs else None
        if self.chat:
            return {"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                    "finish_reason": c.finish_reason}
        return {"index": c.index, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason}

    def role_chunk(self, index: int) -> dict:
        out = self._head(chunk=True)
        out["choices"] = [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                           "finish_reason": None}]
        return out

    def chunk(self, index: int, msg: worker_pb2.GenerateResponse, offset: int) -> dict:
        """The chunk for one Generate message of choice ``index``; ``offset``: that choice's text so far (chars)."""
        lp = self._logprobs(list(msg.logprobs), offset) if self.want_logprobs else None
        reason = (msg.finish_reason or "stop") if msg.finished else None
        out = self._head(chunk=True)
        if self.chat:
            delta = {"content": msg.text} if msg.text else {}
            out["choices"] = [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}]
        else:
            out["choices"] = [{"index": index, "text": msg.text, "logprobs": lp, "finish_reason": reason}]
        return out

    def usage_chunk(self, choices: list[Choice], n: int) -> dict:
        out = self._head(chunk=True)
        out["choices"] = []
        out["usage"] = usage(choices, n)
        return out

    def _logprobs(self, entries: list[worker_pb2.TokenLogprobs], offset: int) -> dict | None:
        if self.chat:
            return {"content": [{**_token(e.chosen), "top_logprobs": [_token(t) for t in e.top]} for e in entries]}
        offsets = []
        for e in entries:
            offsets.append(offset)
            offset += len(e.chosen.text)
        return {"tokens": [e.chosen.text for e in entries], "token_logprobs": [e.chosen.logprob for e in entries],
                "top_logprobs": [_top_by_text(e.top) for e in entries], "text_offset": offsets}


def _token(lp: worker_pb2.Logprob) -> dict:
    return {"token": lp.text, "logprob": lp.logprob, "bytes": list(lp.text.encode())}


def _top_by_text(top) -> dict[str, float]:
    """Completions' alternatives are keyed by text (OpenAI's format); tokens with the same text keep the likeliest."""
    out: dict[str, float] = {}
    for t in top:  # most likely first
        out.setdefault(t.text, t.logprob)
    return out
