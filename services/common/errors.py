"""The one exception hierarchy of adapterfleet.

Every domain error carries the gRPC status it maps to, by name, so that domain code never imports grpc.
The translation to a status happens in exactly one place: ``adapterfleet.common.grpc_errors``.
Messages say what went wrong *and* what to do about it.
"""

from __future__ import annotations


class AdapterFleetError(Exception):
    """Base of all expected errors. ``code`` is a ``grpc.StatusCode`` member name."""

    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(AdapterFleetError):
    """The request or the adapter itself is malformed; retrying the same input cannot succeed."""

    code = "INVALID_ARGUMENT"


class InvalidAdapter(InvalidArgument):
    """An adapter directory failed validation (config, safetensors header, names, shapes, limits)."""


class NotFound(AdapterFleetError):
    code = "NOT_FOUND"


class AlreadyExists(AdapterFleetError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(AdapterFleetError):
    """The system is not in a state that allows the operation (CAS conflict, yanked target, ...)."""

    code = "FAILED_PRECONDITION"


class AliasConflict(FailedPrecondition):
    """Compare-and-set on an alias failed: the alias did not hold the expected target."""


class Incompatible(FailedPrecondition):
    """An adapter does not fit the loaded base model."""


class BlobMissing(FailedPrecondition):
    """A push skipped a file whose blob the store no longer has (collected since the client asked): the client
    pushes again, sending every file."""


class ChecksumMismatch(AdapterFleetError):
    """Bytes do not hash to the digest that was promised for them."""

    code = "DATA_LOSS"


class ResourceExhausted(AdapterFleetError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(AdapterFleetError):
    """A dependency (S3, Redis, a worker) cannot be reached right now; retrying may succeed."""

    code = "UNAVAILABLE"


class DeadlineExceeded(AdapterFleetError):
    code = "DEADLINE_EXCEEDED"


class PermissionDenied(AdapterFleetError):
    code = "PERMISSION_DENIED"
