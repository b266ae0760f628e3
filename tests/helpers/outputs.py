"""What a generation sends back through a GenerateJob's callbacks, collected for a test to wait on and compare."""

from __future__ import annotations

import threading


class Collected:
    """``emit`` / ``fail`` for a GenerateJob: the tokens so far, the error if any, ``done`` once either ended it."""

    def __init__(self):
        self.tokens: list[int] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def emit(self, toks, finished, why, logprobs=None):
        self.tokens += toks
        if finished:
            self.done.set()

    def fail(self, exc):
        self.error = exc
        self.done.set()
