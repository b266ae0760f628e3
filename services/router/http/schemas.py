"""OpenAI's request bodies, parsed strictly at the edge: every field typed and range-checked, unknown fields refused
by name, and the fields of OpenAI's API that the gateway does not serve refused with "not supported yet".

Parsing is JSON-mode strict (``"5"`` is not a number, ``1.5`` is not an integer), so a request means one thing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from adapterfleet.router.http.errors import BadParam

MAX_N = 16               # choices per request (each is one Generate through the router)
MAX_PROMPTS = 16         # prompts in one completions request (each gets n choices)
MAX_STOP = 4             # stop strings, as OpenAI allows
MAX_STOP_CHARS = 256     # one stop string, as workers allow (each of a request's Generates carries every one)
MAX_LOGPROBS = 5         # completions' `logprobs`, as OpenAI allows
MAX_TOP_LOGPROBS = 20    # chat's `top_logprobs`, as OpenAI allows
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; the gateway uses it for chat too (see README)

# Fields of OpenAI's API the gateway does not serve: a request that sets one (to anything but its default) is refused
# with this reason, instead of being silently ignored.
UNSUPPORTED: dict[str, str] = {
    "best_of": "is not supported yet; ask for `n` choices instead",
    "echo": "is not supported yet",
    "suffix": "is not supported yet (no fill-in-the-middle)",
    "logit_bias": "is not supported yet",
    "tools": "is not supported yet (no tool calling)",
    "tool_choice": "is not supported yet (no tool calling)",
    "parallel_tool_calls": "is not supported yet (no tool calling)",
    "functions": "is not supported yet (no function calling)",
    "function_call": "is not supported yet (no function calling)",
    "response_format": "is not supported yet (no structured output)",
    "audio": "is not supported (text only)",
    "modalities": "is not supported (text only)",
    "prediction": "is not supported yet",
    "reasoning_effort": "is not supported",
    "web_search_options": "is not supported",
    "service_tier": "is not supported",
    "store": "is not supported (nothing is stored)",
    "metadata": "is not supported (nothing is stored)",
}
_DEFAULTS: dict[str, Any] = {"best_of": 1, "service_tier": "auto"}


def _refuse_unsupported(data: Any) -> Any:
    if isinstance(data, dict):
        for name, why in UNSUPPORTED.items():
            value = data.get(name)
            if value and value != _DEFAULTS.get(name):
                raise PydanticCustomError("unsupported", "`{name}` {why}", {"name": name, "why": why})
    return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=300)]
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None  # an extension (vLLM's): 0 = off
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    stop: Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)] | list[
        Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None  # an extension (vLLM's)
    user: Annotated[str, Field(max_length=256)] | None = None  # the routing key: sticky among an alias's targets

    _unsupported = model_validator(mode="before")(_refuse_unsupported)

    @field_validator("stop")
    @classmethod
    def _stop_count(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise PydanticCustomError("too_many", "at most {n} stop strings", {"n": MAX_STOP})
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError("stream_options", "`stream_options` is only allowed with `stream: true`")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


TokenIds = list[Annotated[int, Field(ge=0, lt=2**32)]]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None  # with this many alternatives per token

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, v):
        if isinstance(v, list):
            if not v:
                raise PydanticCustomError("empty", "the prompt is empty")
            if isinstance(v[0], (str, list)) and len(v) > MAX_PROMPTS:
                raise PydanticCustomError("too_many", "at most {n} prompts per request", {"n": MAX_PROMPTS})
        return v

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: Annotated[str, Field(max_length=256)] | None = None

    def as_template_input(self) -> dict[str, str]:
        """The dict a chat template reads: ``developer`` is OpenAI's newer name for ``system``."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        out = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.name is not None:
            out["name"] = self.name
        return out


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise PydanticCustomError("top_logprobs", "`top_logprobs` needs `logprobs: true`")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise PydanticCustomError("max_tokens", "send `max_tokens` or `max_completion_tokens`, not both")
        return self


def parse(model: type[_Sampling], body: bytes):
    """A request body as ``model``, or BadParam naming the first field that is wrong and why."""
    if not body.strip():
        raise BadParam("the request has no body: send a JSON object", None)
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise _bad_param(err) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict"}


def _bad_param(err: ValidationError) -> BadParam:
    errors = err.errors(include_url=False)
    # In a union every branch reports; a range error says more than "should be a valid string" from another branch.
    first = next((e for e in errors if not e["type"].endswith(("_type", "_parsing"))), errors[0])
    loc = [str(p) for p in first["loc"]]
    kind, msg = first["type"], first["msg"]
    if kind == "json_invalid":
        return BadParam(f"the body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", None)
    if kind == "unsupported":
        return BadParam(msg, str(first.get("ctx", {}).get("name")), "unsupported_parameter")
    if kind == "extra_forbidden":
        return BadParam(f"unknown parameter `{'.'.join(loc)}`", ".".join(loc), "unknown_parameter")
    if kind == "missing":
        return BadParam(f"`{'.'.join(loc)}` is required", ".".join(loc))
    # a union's error locations name the branch tried ("constrained-str", "list[int]"); keep the field's own path
    path = [p for p in loc if p.isdigit() or (p.isidentifier() and p not in _TYPE_TAGS)]
    param = ".".join(path) or None
    return BadParam(f"invalid `{param}`: {msg}" if param else msg, param)
