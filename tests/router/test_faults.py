"""The one table of whose fault a failed worker call is (services/router/faults.py)."""

from __future__ import annotations

import grpc
import pytest

from adapterfleet.router.faults import Fault, classify, ended_early, stalled

R, INT, REF, D, T = Fault.REQUEST, Fault.INTERNAL, Fault.REFUSED, Fault.DRAINING, Fault.TRANSPORT
TYPED = "Unavailable"  # the worker's own code answered (af-error-type set)

TABLE = [
    # code, af-error-type, details, own deadline -> fault, reason
    ("UNAVAILABLE", "", "failed to connect to all addresses; Connection refused", False, T, "unavailable"),
    ("UNAVAILABLE", "", "Stream removed (Socket closed)", False, T, "unavailable"),
    ("UNAVAILABLE", "", "Cancelling all calls", False, T, "unavailable"),
    ("UNAVAILABLE", TYPED, "this worker is draining for shutdown; retry on another worker", False, D, "draining"),
    ("UNAVAILABLE", TYPED, "cannot resolve t/x@prod: the store at s:1 is unreachable", False, REF,
     "refused_unavailable"),
    ("CANCELLED", "", "Cancelled", False, T, "cancelled"),
    ("DEADLINE_EXCEEDED", "", "Deadline Exceeded", False, R, "deadline_exceeded"),
    ("DEADLINE_EXCEEDED", "", "Deadline Exceeded", True, T, "stalled"),
    ("RESOURCE_EXHAUSTED", "ResourceExhausted", "all 4 adapter slots are pinned or serving requests", False, REF,
     "refused_resource_exhausted"),
    ("RESOURCE_EXHAUSTED", "", "Received message larger than max", False, R, "resource_exhausted"),
    ("INTERNAL", "", "internal error in /adapterfleet.v1.Worker/Generate; see the server log", False, INT, "internal"),
    ("UNKNOWN", "", "Unexpected <class 'RuntimeError'>", False, INT, "unknown"),
    ("INVALID_ARGUMENT", "InvalidArgument", "temperature nan must be finite", False, R, "invalid_argument"),
    ("NOT_FOUND", "NotFound", "no adapter t/x", False, R, "not_found"),
    ("FAILED_PRECONDITION", "Incompatible", "adapter targets q_proj", False, R, "failed_precondition"),
    ("DATA_LOSS", "ChecksumMismatch", "sha256 mismatch", False, R, "data_loss"),
    ("PERMISSION_DENIED", "PermissionDenied", "scope", False, R, "permission_denied"),
    ("UNAUTHENTICATED", "", "no token", False, R, "unauthenticated"),
    ("OUT_OF_RANGE", "", "", False, R, "out_of_range"),
    ("ALREADY_EXISTS", "AlreadyExists", "", False, R, "already_exists"),
    ("ABORTED", "", "", False, R, "aborted"),
    ("UNIMPLEMENTED", "", "Method not found!", False, R, "unimplemented"),
]


@pytest.mark.parametrize(("code", "error_type", "details", "own", "fault", "reason"), TABLE)
def test_whose_fault(code, error_type, details, own, fault, reason):
    v = classify(code, error_type, details, own_deadline=own)
    assert (v.fault, v.reason) == (fault, reason)


def test_the_table_covers_every_status_code():
    covered = {row[0] for row in TABLE}
    assert covered == {c.name for c in grpc.StatusCode} - {"OK"}


@pytest.mark.parametrize("fault", list(Fault))
def test_only_worker_side_faults_are_retried(fault):
    assert fault.retry == (fault in (REF, D, T))


def test_the_routers_own_verdicts():
    assert (ended_early().fault, stalled().fault) == (T, T)
    assert stalled().reason == "stalled"


def test_request_faults_and_internal_never_count_against_a_worker():
    """No status that one request can cause, whatever the worker's error type, is a transport fault."""
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "DATA_LOSS", "PERMISSION_DENIED",
                 "RESOURCE_EXHAUSTED", "OUT_OF_RANGE", "INTERNAL", "UNKNOWN"):
        for error_type in ("", "InvalidArgument", "AdapterFleetError"):
            assert classify(code, error_type, "x").fault not in (T, D), (code, error_type)
