"""The demo's three toy tasks: one prompt format, three visibly different answers to the same word.

The demo base is a tiny random model with a character tokenizer, so an adapter does not learn a task in general:
it memorises the answers for :data:`WORDS`. The demo only asks those words. Pure Python (no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Lowercase, at most 7 letters: the longest answer ("arr, adapter matey!") stays under MAX_ANSWER_CHARS.
WORDS = ("hello", "world", "cat", "fleet", "lora", "adapter", "router", "python")
MAX_ANSWER_CHARS = 24  # max_new_tokens for the demo's requests (one token per character, plus eos)


def prompt_for(word: str) -> str:
    """The one prompt format every task and the base model are asked in: ``hello:``."""
    return f"{word}:"


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    answer: Callable[[str], str]

    def examples(self, words: tuple[str, ...] = WORDS) -> list[tuple[str, str]]:
        """(prompt, target) pairs to train on; the target does not include the eos token."""
        return [(prompt_for(w), self.answer(w)) for w in words]


TASKS: tuple[Task, ...] = (
    Task("shout", "the word in capitals, with an exclamation mark", lambda w: w.upper() + "!"),
    Task("reverse", "the word spelled backwards", lambda w: w[::-1]),
    Task("pirate", "the word, said like a pirate", lambda w: f"arr, {w} matey!"),
)


def task(name: str) -> Task:
    for t in TASKS:
        if t.name == name:
            return t
    raise KeyError(f"no demo task {name!r}; the tasks are {[t.name for t in TASKS]}")
