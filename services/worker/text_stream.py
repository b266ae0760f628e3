"""From the engine's tokens to what a caller sees: text decoded as it grows, and stop strings.

- :class:`Decoder` decodes the generated ids incrementally in a small window (the method of vLLM and TGI: decode
  ``ids[prefix:]`` and ``ids[prefix:read]`` and keep the difference), so each step costs a few tokens, not the
  whole output; a trailing incomplete UTF-8 sequence (``"\\ufffd"``) waits for the token that completes it.
- :class:`StopStrings` finds stop strings in the decoded text, across token boundaries.
- :class:`Output` folds steps into chunks. A chunk's text is the text of its tokens: tokens whose text may be the
  start of a stop string (or an unfinished character) are held back, with their text and logprobs, until that is
  settled. So ``resume_ids`` (the tokens a caller has received) always match the text it has. When a stop string
  appears, the stream ends with the text before it, finish reason "stop"; the tokens that made it are reported
  (and counted) with that last chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapterfleet.worker.logprobs import TokenLogprobs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], skip_special: bool = True) -> str:
    text = tokenizer.decode(list(ids), skip_special_tokens=skip_special)
    assert isinstance(text, str)  # one sequence of ids decodes to one string (only a batch gives a list)
    return text


class Decoder:
    """The text of a growing list of generated ids (special tokens skipped), decoded in a sliding window."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, ids: Sequence[int] = ()):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read]: context already turned into text
        self.text = ""
        self.incomplete = False        # ids past ``read`` whose text is not out yet
        self.add(ids)

    def add(self, ids: Sequence[int]) -> None:
        self._ids += ids
        before = decode(self._tok, self._ids[self._prefix:self._read])
        after = decode(self._tok, self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith(INCOMPLETE):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self._ids)
            self.incomplete = False
        else:
            self.incomplete = self._read < len(self._ids) and after.endswith(INCOMPLETE)

    def flush(self) -> None:
        """At the end: whatever the held ids decode to, an unfinished character included."""
        before = decode(self._tok, self._ids[self._prefix:self._read])
        after = decode(self._tok, self._ids[self._prefix:])
        if len(after) > len(before):
            self.text += after[len(before):]
        self._prefix = self._read = len(self._ids)
        self.incomplete = False


class StopStrings:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, start: int) -> int | None:
        """The first index of a stop string in ``text`` that ends past ``start`` (text before it was checked)."""
        lo = max(0, start - self.longest + 1)
        found = [i for i in (text.find(s, lo) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def may_start(self, text: str) -> bool:
        """Whether the end of ``text`` is the beginning of a stop string (so it cannot be sent yet)."""
        return any(text.endswith(s[:k]) for s in self.stops for k in range(1, len(s)))


@dataclass(frozen=True)
class Piece:
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str
    logprobs: tuple[TokenLogprobs, ...]
    completion_tokens: int


@dataclass
class Output:
    """Folds the engine's steps into the pieces a caller is sent (see the module docstring)."""

    tokenizer: PreTrainedTokenizerBase | None
    stops: StopStrings
    resumed: Sequence[int] = ()
    _decoder: Decoder | None = None
    _sent: int = 0  # characters of the decoded text the caller has
    _count: int = 0
    _tokens: list[int] = field(default_factory=list)
    _logprobs: list[TokenLogprobs] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            self._decoder = Decoder(self.tokenizer, self.resumed)
            self._decoder.flush()  # the caller already has this text, whole
            self._sent = len(self._decoder.text)
        self._count = len(self.resumed)

    def add(self, tokens: list[int], finished: bool, reason: str, logprobs: TokenLogprobs | None) -> Piece | None:
        """A piece to send, or None while the new tokens are held back."""
        self._count += len(tokens)
        self._tokens += tokens
        if logprobs is not None:
            self._logprobs.append(logprobs)
        decoder = self._decoder
        if decoder is None:
            return self._piece("", finished, reason)
        decoder.add(tokens)
        if finished:
            decoder.flush()
        if self.stops.stops:
            at = self.stops.find(decoder.text, self._sent)
            if at is not None:
                return self._piece(decoder.text[self._sent:at], True, "stop")
        if not finished and (decoder.incomplete or self.stops.may_start(decoder.text[self._sent:])):
            return None
        text, self._sent = decoder.text[self._sent:], len(decoder.text)
        return self._piece(text, finished, reason)

    def _piece(self, text: str, finished: bool, reason: str) -> Piece:
        piece = Piece(self._tokens, text, finished, reason, tuple(self._logprobs), self._count)
        self._tokens, self._logprobs = [], []
        return piece
