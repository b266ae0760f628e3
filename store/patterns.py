"""The regular expressions an adapter_config.json brings (target_modules as a string, exclude_modules,
modules_to_save entries, layers_pattern, the keys of rank_pattern/alpha_pattern), matched in bounded time.

PEFT matches them with Python's ``re``, which backtracks: ``(a+)+b`` against 28 a's runs for seconds, holding the
GIL throughout, so even a thread would stall the event loop. Here each pattern is compiled once, with ``re`` (is it
valid as PEFT sees it?) and with the ``regex`` package (``re``'s syntax and semantics, VERSION0), and matched by the
latter with a timeout and the GIL released. A match that times out, or matching that spends more CPU than the
caller's :func:`cpu_budget`, is refused as InvalidAdapter naming the pattern. Patterns are at most
MAX_PATTERN_CHARS long, so compiling one is bounded too.

``regex`` comes with the store and worker extras. The SDK's preflight (base install) may lack it and then matches
with ``re``: it only ever matches the caller's own adapter, on the caller's machine.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.refs import show

MAX_PATTERN_CHARS = 16 << 10   # far above any target_modules regex seen in PEFT configs (a few hundred characters)
MATCH_TIMEOUT_S = 0.25         # one match; real patterns take microseconds
_WHERE = "adapter_config.json"
_NESTED = ("it backtracks catastrophically (nested repetition such as '(a+)+' or '(a|aa)+'); rewrite it without "
           "nested repetition, or list the module names")

_engine: Any = None  # the `regex` module once imported; False when it is not installed


def _bounded_engine() -> Any:
    global _engine
    if _engine is None:
        try:  # imported here, not at the top: the SDK's base install has no `regex` and matches with re
            _engine = importlib.import_module("regex")
        except ImportError:
            _engine = False
    return _engine


def bounded() -> bool:
    """Are matches bounded here (is the ``regex`` package installed)?"""
    return bool(_bounded_engine())


# ---- the CPU budget of one validation ----------------------------------------------------------------------------


@dataclass
class _Budget:
    seconds: float
    deadline: float  # time.thread_time() of the thread that matches


_budget: ContextVar[_Budget | None] = ContextVar("adapterfleet_pattern_budget", default=None)


@contextlib.contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Within this block (entered in the thread that does the matching), matching may use ``seconds`` of this
    thread's CPU in all; past that, the next match or :func:`spend` raises InvalidAdapter."""
    token = _budget.set(_Budget(seconds, time.thread_time() + seconds))
    try:
        yield
    finally:
        _budget.reset(token)


def spend(doing: str = "") -> float:
    """Raise InvalidAdapter if the budget is spent; else the seconds left (inf without a budget)."""
    budget = _budget.get()
    if budget is None:
        return float("inf")
    left = budget.deadline - time.thread_time()
    if left <= 0:
        raise InvalidAdapter(
            f"{_WHERE}: matching the adapter's tensor names against the config's module patterns took more than "
            f"{budget.seconds:g} s of CPU{f' (at {doing})' if doing else ''}; use fewer or simpler patterns "
            "(target_modules, exclude_modules, modules_to_save, rank_pattern/alpha_pattern keys)"
        )
    return left


# ---- one pattern ---------------------------------------------------------------------------------------------------


class Pattern:
    """A user pattern as PEFT splices it (``template``, "{}" for as is), compiled once; ``what`` names it in errors
    ("target_modules", "rank_pattern key", ...)."""

    __slots__ = ("_bounded", "_re", "source", "template", "what")

    def __init__(self, source: str, what: str, template: str = "{}"):
        self.source, self.what, self.template = source, what, template
        if len(source) > MAX_PATTERN_CHARS:
            raise self._fail(f"is {len(source)} characters long, more than the {MAX_PATTERN_CHARS} a pattern may "
                             "have; list the module names instead")
        text = template.format(source)
        try:
            self._re = re.compile(text)
        except (re.error, OverflowError, RecursionError) as e:
            raise self._fail(f"is not a valid regular expression ({type(e).__name__}: {show(str(e), 120)})") from None
        engine = _bounded_engine()
        self._bounded = None
        if engine:
            try:
                self._bounded = engine.compile(text, engine.VERSION0)
            except (engine.error, OverflowError, RecursionError, ValueError) as e:
                raise self._fail(f"uses syntax the store cannot match in bounded time ({type(e).__name__}: "
                                 f"{show(str(e), 120)}); simplify it or list the module names") from None

    def _fail(self, why: str) -> InvalidAdapter:
        return InvalidAdapter(f"{_WHERE}: {self.what} {show(self.source)} {why}")

    def match(self, text: str) -> Any:
        """``re.match`` of the spliced pattern (a match object or None)."""
        return self._run("match", text)

    def fullmatch(self, text: str) -> Any:
        return self._run("fullmatch", text)

    def _run(self, how: str, text: str) -> Any:
        if self._bounded is None:
            return getattr(self._re, how)(text)
        timeout = min(MATCH_TIMEOUT_S, spend(f"{self.what} {show(self.source, 40)}"))
        try:
            return getattr(self._bounded, how)(text, timeout=timeout, concurrent=True)
        except TimeoutError:
            if timeout < MATCH_TIMEOUT_S:
                spend(f"{self.what} {show(self.source, 40)}")  # the budget ran out mid-match: say so
            raise self._fail(f"took more than {1e3 * timeout:.0f} ms to match {show(text, 60)}: {_NESTED}") from None

    def __repr__(self) -> str:
        return f"Pattern({self.source!r}, {self.what!r}, {self.template!r})"
