"""Alias targets: the one home of the rule every part must agree on.

An alias points at one version (``3``) or at weighted versions (``3:90,4:10``, a canary). Weights are whole
percentages that sum to 100. When a request resolves a weighted alias, the version is chosen by weight among the
*live* targets (yanked ones dropped, the rest keeping their weights), and the same routing key always gets the same
version (sticky canaries), wherever the choice is made: in the store, in a router, in a client.

    parse("3:90,4:10")  -> ((3, 90), (4, 10))      the CLI's and users' syntax
    encode / decode                                 the stored form (the same text)
    check(targets)                                  what the store accepts
    choose(live, routing_key, rng)                  the sticky weighted choice, on (version, weight, ...) tuples
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from adapterfleet.common.errors import InvalidArgument

Targets = tuple[tuple[int, int], ...]  # ((version, weight), ...) sorted by version
TargetsLike = int | Mapping[int, int] | Iterable[tuple[int, int]]  # what users may pass: 3, {3: 90, 4: 10}
SYNTAX = "'3' (one version) or '3:90,4:10' (versions with weights that sum to 100)"
MAX_TARGETS = 16


@dataclass(frozen=True)
class LiveTarget:
    """A target of a resolved alias that is not yanked, with the canonical key of its version."""

    version: int
    weight: int
    key: str  # "name@sha256:<hex>"


T = TypeVar("T", tuple[int, int], LiveTarget)


def parse(text: str) -> Targets:
    """``'3'`` -> ((3, 100),); ``'3:90,4:10'`` -> ((3, 90), (4, 10)). Raises InvalidArgument naming the syntax."""
    text = (text or "").strip()
    if not text:
        raise InvalidArgument(f"alias targets are empty; use {SYNTAX}")
    if ":" not in text and "," not in text:
        return check(((_int(text, "version", text), 100),))
    out = []
    for part in text.split(","):
        version, sep, weight = part.strip().partition(":")
        if not sep:
            raise InvalidArgument(f"alias target {part.strip()[:40]!r} has no weight; use {SYNTAX}")
        out.append((_int(version, "version", text), _int(weight, "weight", text)))
    return check(tuple(out))


def _int(text: str, what: str, whole: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise InvalidArgument(f"alias {what} {text[:20]!r} in {whole[:60]!r} is not a whole number; use {SYNTAX}")
    return int(text)


def encode(targets: Targets) -> str:
    return ",".join(f"{v}:{w}" for v, w in sorted(targets))


def decode(text: str) -> Targets:
    """The stored form back (trusted: written by :func:`encode`). Empty text: no targets."""
    if not text:
        return ()
    return tuple(sorted((int(v), int(w)) for v, w in (part.split(":") for part in text.split(","))))


def check(targets: Targets) -> Targets:
    """Return ``targets`` sorted by version if the store would accept them, else raise InvalidArgument."""
    if not targets:
        raise InvalidArgument(f"an alias needs at least one target version: {SYNTAX}")
    if len(targets) > MAX_TARGETS:
        raise InvalidArgument(f"an alias has at most {MAX_TARGETS} targets, not {len(targets)}")
    versions = [v for v, _ in targets]
    if len(set(versions)) != len(versions):
        raise InvalidArgument(f"alias targets name a version twice: {encode(targets)}")
    if any(v < 1 for v in versions) or any(w < 0 for _, w in targets):
        raise InvalidArgument(f"alias targets must be positive versions with non-negative weights: {targets}")
    total = sum(w for _, w in targets)
    if total != 100:
        raise InvalidArgument(f"alias weights sum to {total}, not 100: {encode(targets)}")
    return tuple(sorted(targets))


def coerce(targets: TargetsLike) -> Targets:
    """What SDK users pass (3, {3: 90, 4: 10}, [(3, 90), (4, 10)]) as checked Targets."""
    if isinstance(targets, bool):
        raise InvalidArgument(f"alias targets must be a version or versions with weights, not {targets!r}")
    if isinstance(targets, int):
        return check(((targets, 100),))
    items = targets.items() if isinstance(targets, Mapping) else targets
    return check(tuple((int(v), int(w)) for v, w in items))


def choose(live: Sequence[T], routing_key: str, rng: random.Random) -> T:
    """Pick one of the live targets by weight; the same routing key always gets the same one (sticky canaries).

    ``live`` holds (version, weight) pairs or :class:`LiveTarget`s, sorted by version. Yanked targets are dropped
    before this is called and the rest keep their weights, so a routing key that was on a surviving version stays
    on it. All weights zero: the lowest version.
    """
    if not live:
        raise ValueError("choose() needs at least one live target")
    weights = [_weight(t) for t in live]
    total = sum(weights)
    if total <= 0:
        return live[0]
    if routing_key:
        point = int.from_bytes(hashlib.sha256(routing_key.encode()).digest()[:8], "big") % total
    else:
        point = rng.randrange(total)
    for target, weight in zip(live, weights, strict=True):
        point -= weight
        if point < 0:
            return target
    return live[-1]


def _weight(t: tuple[int, int] | LiveTarget) -> int:
    return t.weight if isinstance(t, LiveTarget) else t[1]
