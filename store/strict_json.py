"""JSON parsing that refuses what json.loads lets through: duplicate keys and NaN/Infinity."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def strict_loads(text: str, *, on_duplicate: Callable[[str], Exception],
                 on_constant: Callable[[str], Exception]) -> Any:
    """``json.loads``; a key twice in one object raises ``on_duplicate(key)``, NaN/Infinity ``on_constant(name)``."""

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in items:
            if k in out:
                raise on_duplicate(k)
            out[k] = v
        return out

    def constant(name: str) -> Any:
        raise on_constant(name)

    return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
