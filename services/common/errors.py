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

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Extra trailing metadata the status carries (e.g. a retry hint), beyond the error's type."""
        return ()


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


class SignatureRejected(FailedPrecondition):
    """A worker or SDK with trusted keys refused an adapter version: unsigned, signed by no trusted key, or the
    signature covers other files than the version's. Nothing of it was installed."""


class UnsafeFileName(InvalidAdapter):
    """A file name that could write outside its directory (a separator, '..', an absolute path, NUL, too long):
    refused before any byte is written, whether a push sends it or a store serves it."""


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
    """The caller's token is valid but does not allow this (wrong tenant or missing scope)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(AdapterFleetError):
    """No token, or one that is malformed, wrongly signed, expired or revoked."""

    code = "UNAUTHENTICATED"


RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata of a rate-limit refusal: wait this long before retrying


class RateLimited(ResourceExhausted):
    """A tenant is over its request rate or concurrent-stream limit; ``retry_after_s`` says when to retry."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((RETRY_AFTER_KEY, str(max(1, round(self.retry_after_s * 1000)))),)
