"""Every field of a Generate or Score request checked where it enters the worker, before it reaches the engine.

A refusal is INVALID_ARGUMENT naming the field and the rule, echoing at most a short prefix of the bad value.
Limits that depend on the loaded model (vocabulary, positions) or on the worker's config come in :class:`Bounds`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.worker.params import GenerateParams
from adapterfleet.worker.sampling import Sampling

MAX_TEMPERATURE = 100.0         # far past uniform already; 0 (or below sampling.GREEDY_BELOW) is greedy
MAX_PENALTY = 2.0               # presence_penalty, frequency_penalty: OpenAI's range -2..2
MAX_REPETITION_PENALTY = 10.0   # transformers' repetition_penalty: (0, 10]
MAX_TOP_LOGPROBS = 20           # OpenAI's bound
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_IDS = 64
MAX_ROUTING_KEY = 256
ECHO = 32                       # characters of a bad value quoted back


@dataclass(frozen=True)
class Bounds:
    vocab: int                   # the input embedding's rows: every token id must be below
    max_positions: int | None    # the model's context (prompt + new tokens), when its config says
    max_new_tokens: int          # WorkerConfig.max_new_tokens_limit
    max_prompt_tokens: int       # WorkerConfig.max_prompt_tokens
    max_text_chars: int          # WorkerConfig.max_prompt_chars: text is refused past this before tokenizing
    tokenizer: bool              # text prompts and stop strings need one


def echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= ECHO else text[:ECHO] + "…"


def _finite_in(field: str, value: float, lo: float, hi: float, rule: str) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidArgument(f"{field} {echo(value)} is out of range: {rule}")


def check_sampling(s: Sampling, vocab: int) -> None:
    _finite_in("sampling.temperature", s.temperature, 0.0, MAX_TEMPERATURE,
               f"it must be a finite number from 0 (greedy) to {MAX_TEMPERATURE:g}")
    _finite_in("sampling.top_p", s.top_p, 0.0, 1.0, "it must be in (0, 1]; 0 or 1 turns it off")
    if not 0 <= s.top_k <= vocab:
        raise InvalidArgument(f"sampling.top_k {echo(s.top_k)} is out of range: 0 (off) to the vocabulary size {vocab}")
    if s.seed is not None and not 0 <= s.seed < 1 << 64:
        raise InvalidArgument(f"sampling.seed {echo(s.seed)} is out of range: 0 to 2**64-1")
    if not (math.isfinite(s.repetition_penalty) and 0.0 < s.repetition_penalty <= MAX_REPETITION_PENALTY):
        raise InvalidArgument(f"sampling.repetition_penalty {echo(s.repetition_penalty)} is out of range: it must be "
                              f"in (0, {MAX_REPETITION_PENALTY:g}]; 1 (or 0 on the wire) turns it off")
    for field, value in (("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)):
        _finite_in(f"sampling.{field}", value, -MAX_PENALTY, MAX_PENALTY,
                   f"it must be a finite number from -{MAX_PENALTY:g} to {MAX_PENALTY:g}")


def check_ids(field: str, ids: Sequence[int], vocab: int) -> None:
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise InvalidArgument(f"{field}: token ids {echo(bad[:5])} are outside the vocabulary (size {vocab})")


def check_text(field: str, text: str, b: Bounds) -> None:
    if text and not b.tokenizer:
        raise InvalidArgument(f"{field}: this base model has no tokenizer; send token ids instead of text")
    if len(text) > b.max_text_chars:
        raise InvalidArgument(f"{field} of {len(text)} characters is longer than this worker's limit of "
                              f"{b.max_text_chars}")


def check_routing_key(key: str) -> None:
    if len(key) > MAX_ROUTING_KEY:
        raise InvalidArgument(f"routing_key of {len(key)} characters is longer than {MAX_ROUTING_KEY}")


def check_generate(p: GenerateParams, b: Bounds) -> None:
    """Everything that can be checked before the prompt is tokenized."""
    check_sampling(p.sampling, b.vocab)
    if not 1 <= p.max_new_tokens <= b.max_new_tokens:
        raise InvalidArgument(f"max_new_tokens {echo(p.max_new_tokens)} must be 1..{b.max_new_tokens}")
    if len(p.resume_ids) >= p.max_new_tokens:
        raise InvalidArgument(f"{len(p.resume_ids)} resume_ids leave nothing of max_new_tokens "
                              f"{p.max_new_tokens} to generate")
    check_ids("resume_ids", p.resume_ids, b.vocab)
    if len(p.stop_ids) > MAX_STOP_IDS:
        raise InvalidArgument(f"{len(p.stop_ids)} stop_ids are more than {MAX_STOP_IDS}")
    # stop ids outside the vocabulary are allowed: they never match, which callers use to mean "no stop id"
    if len(p.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"{len(p.stop)} stop strings are more than {MAX_STOP_STRINGS}")
    for s in p.stop:
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise InvalidArgument(f"stop string {echo(s)} must be 1..{MAX_STOP_CHARS} characters")
    if p.stop and not b.tokenizer:
        raise InvalidArgument("stop strings need a tokenizer, and this base model has none; use stop_ids")
    if not 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"top_logprobs {echo(p.top_logprobs)} must be 0..{MAX_TOP_LOGPROBS}")
    if p.top_logprobs and not p.logprobs:
        raise InvalidArgument("top_logprobs needs logprobs: true")
    check_routing_key(p.routing_key)
    check_text("prompt", p.prompt, b)
    if not p.prompt and not p.prompt_ids:
        raise InvalidArgument("send a prompt (text) or prompt_ids")


def check_prompt(ids: Sequence[int], max_new_tokens: int, b: Bounds, field: str = "prompt_ids") -> None:
    """The tokenized prompt (resume_ids not included): ids in the vocabulary, lengths within the bounds."""
    if not ids:
        raise InvalidArgument(f"{field} is empty: send at least one token")
    if len(ids) > b.max_prompt_tokens:
        raise InvalidArgument(f"{field} of {len(ids)} tokens is longer than this worker's limit of "
                              f"{b.max_prompt_tokens}")
    check_ids(field, ids, b.vocab)
    if b.max_positions and len(ids) + max_new_tokens > b.max_positions:
        raise InvalidArgument(f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} exceeds the "
                              f"model's {b.max_positions} positions; shorten the prompt or ask for fewer tokens")
