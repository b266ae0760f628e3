"""Whose fault is a failed call to a worker: the request's, or the worker's? One table, used for every hop: the
router's proxy and the SDK's direct (lookaside) clients both retry by it.

The router retries elsewhere, and counts a failure against a worker's breaker (``breaker.py``), only when the
worker or the path to it failed (**transport**). A status that says the request itself is at fault goes straight
back to the caller and touches no worker; so does INTERNAL, which one bad request can cause on every worker alike
(a NaN temperature once made the router retry it on each worker and mark them all unhealthy).

``error_type`` is the worker's domain error class (trailing metadata ``af-error-type``): present when the worker's
own code answered, absent when gRPC itself made the status (connection refused or reset, GOAWAY, a stopping
server). A typed UNAVAILABLE therefore comes from a live worker: one that is draining (eject it now), or one whose
store is unreachable (another worker may hold the adapter resident: retry there, but the worker is not at fault,
so an outage of the store cannot empty the healthy set).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from adapterfleet.common.grpc_errors import ERROR_TYPE_KEY


class Fault(enum.Enum):
    REQUEST = "request"      # the request is at fault: back to the caller, no retry, no worker blamed
    INTERNAL = "internal"    # the worker failed on this request: back to the caller, counted, no worker blamed
    REFUSED = "refused"      # a live worker cannot take it now: retry on another worker, none blamed
    DRAINING = "draining"    # the worker is shutting down: retry on another worker, eject this one now
    TRANSPORT = "transport"  # the worker or the path to it failed: retry on another, counts against its breaker

    @property
    def retry(self) -> bool:
        return self in (Fault.REFUSED, Fault.DRAINING, Fault.TRANSPORT)


@dataclass(frozen=True)
class Verdict:
    fault: Fault
    reason: str  # a short label for metrics and logs: "unavailable", "stalled", "invalid_argument", ...


# gRPC status name -> fault, for statuses whose meaning does not depend on who made them
_BY_CODE: dict[str, Fault] = {
    "INVALID_ARGUMENT": Fault.REQUEST, "NOT_FOUND": Fault.REQUEST, "FAILED_PRECONDITION": Fault.REQUEST,
    "DATA_LOSS": Fault.REQUEST, "PERMISSION_DENIED": Fault.REQUEST, "UNAUTHENTICATED": Fault.REQUEST,
    "OUT_OF_RANGE": Fault.REQUEST, "ALREADY_EXISTS": Fault.REQUEST, "ABORTED": Fault.REQUEST,
    "UNIMPLEMENTED": Fault.REQUEST, "RESOURCE_EXHAUSTED": Fault.REQUEST,  # untyped: gRPC's message size limit
    "INTERNAL": Fault.INTERNAL, "UNKNOWN": Fault.INTERNAL,
    "CANCELLED": Fault.TRANSPORT,  # our own cancels never surface as errors: this is the worker's server stopping
}
STALLED = "stalled"          # the router's own per-attempt limit (RouterConfig.stall_s) expired
ENDED_EARLY = "ended_early"  # a stream closed OK before its last message


def classify(code: str, error_type: str = "", details: str = "", *, own_deadline: bool = False) -> Verdict:
    """A failed call to a worker -> whose fault it is.

    ``code``: the status name; ``error_type``: the worker's ``af-error-type`` ('' when gRPC made the status);
    ``own_deadline``: a DEADLINE_EXCEEDED came from the router's own per-attempt limit, not the caller's deadline.
    """
    reason = code.lower()
    if code == "UNAVAILABLE":
        if not error_type:
            return Verdict(Fault.TRANSPORT, reason)  # refused, reset, GOAWAY, socket closed
        if "draining" in details:
            return Verdict(Fault.DRAINING, "draining")
        return Verdict(Fault.REFUSED, f"refused_{reason}")  # e.g. its store is unreachable for a cold load
    if code == "DEADLINE_EXCEEDED":
        # The caller's own deadline: nobody's fault here, and no time is left to retry.
        return Verdict(Fault.TRANSPORT, STALLED) if own_deadline else Verdict(Fault.REQUEST, reason)
    if code == "RESOURCE_EXHAUSTED" and error_type:
        return Verdict(Fault.REFUSED, f"refused_{reason}")  # its adapter slots are all busy: another may have one
    return Verdict(_BY_CODE.get(code, Fault.REQUEST), reason)


def ended_early() -> Verdict:
    return Verdict(Fault.TRANSPORT, ENDED_EARLY)


def stalled() -> Verdict:
    return Verdict(Fault.TRANSPORT, STALLED)


def verdict_of(err: grpc.RpcError, *, own_deadline: bool = False) -> Verdict:
    """A failed call's status (and the worker's error type, from trailing metadata) -> whose fault it is."""
    trailing = dict(err.trailing_metadata() or ())
    code = err.code().name if err.code() is not None else "UNKNOWN"
    return classify(code, str(trailing.get(ERROR_TYPE_KEY, "")), err.details() or "", own_deadline=own_deadline)
