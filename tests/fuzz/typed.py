"""The one property every fuzz target shares: a call returns, or raises an AdapterFleetError (the typed errors the
gRPC layer turns into a status); any other exception fails, and so does a call that takes too long."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hypothesis import settings

from adapterfleet.common.errors import AdapterFleetError

FUZZ = settings.get_profile("adapterfleet-fuzz")  # registered by tests/fuzz/conftest.py (2,000 or 100,000 examples)
CALL_LIMIT_S = 2.0  # generous for a loaded 2-core machine: the inputs here take microseconds to milliseconds
MAX_MESSAGE = 1000  # a refusal never echoes a whole hostile input back


def typed(fn: Callable[..., Any], *args: Any, short: bool = True, **kw: Any) -> Any:
    """``fn(*args, **kw)``, or the AdapterFleetError it raised. ``short``: the error's message is bounded too."""
    start = time.perf_counter()
    try:
        out = fn(*args, **kw)
    except AdapterFleetError as err:
        out = err
        if short:
            assert len(err.message) <= MAX_MESSAGE, (len(err.message), err.message[:300])
    elapsed = time.perf_counter() - start
    assert elapsed < CALL_LIMIT_S, f"{getattr(fn, '__name__', fn)} took {elapsed:.2f} s"
    return out
