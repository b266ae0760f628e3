"""One bad row fails alone: typed errors for a row's failure, and the search for the rows that cause one.

When a batched forward raises, the engine retries halves of the batch (bisection) until it has the rows that fail
on their own: one culprit among n rows costs about 2·log2(n) smaller forwards, paid only when something failed.
Those rows fail with a typed error; the others go on as if nothing had happened (their results do not depend on
their batch-mates). A failure that no row causes alone (e.g. memory for the whole batch) fails the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from adapterfleet.common.errors import AdapterFleetError, FailedPrecondition, ResourceExhausted

T = TypeVar("T")


class RowFailed(FailedPrecondition):
    """The model raised on this request even when it ran alone; its batch-mates went on."""


class NonFiniteLogits(FailedPrecondition):
    """The model's logits for this request held NaN or +inf (or nothing finite)."""


def row_error(exc: BaseException, during: str) -> AdapterFleetError:
    """The typed error a request gets when ``during`` (prefill, a decode step, scoring) failed on it alone."""
    if isinstance(exc, AdapterFleetError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        return ResourceExhausted(f"out of device memory during {during}; retry with a shorter prompt or fewer "
                                 "tokens, or on a less busy worker")
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return RowFailed(f"the model failed on this request during {during} ({type(exc).__name__}: {detail}), also "
                     "when run alone; the other requests in its batch went on")


def batch_error(exc: BaseException, during: str) -> BaseException:
    """What every request of a batch gets when ``during`` failed and no row failed alone: typed when we know the
    cause (out of memory), else the original error (INTERNAL: a fault of the worker, not of a request)."""
    if isinstance(exc, AdapterFleetError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        return ResourceExhausted(f"out of device memory during {during}; retry, or on a less busy worker")
    return exc


def non_finite(step: int) -> NonFiniteLogits:
    return NonFiniteLogits(f"the model's logits for this request hold NaN or inf at output token {step + 1}: its "
                           "adapter or inputs drive the model out of range; the other requests in its batch went on")


def culprits(items: list[T], attempt: Callable[[list[T]], object], failure: BaseException
             ) -> list[tuple[T, BaseException]]:
    """The items of ``items`` (which just failed with ``failure``) that make ``attempt`` raise on their own."""

    def search(group: list[T], exc: BaseException) -> list[tuple[T, BaseException]]:
        if len(group) == 1:
            return [(group[0], exc)]
        found: list[tuple[T, BaseException]] = []
        mid = len(group) // 2
        for half in (group[:mid], group[mid:]):
            try:
                attempt(half)
            except Exception as err:  # noqa: BLE001 - any error marks the half as holding a culprit
                found += search(half, err)
        return found

    return search(items, failure)
