"""The one translation from adapterfleet's typed errors to HTTP, in OpenAI's error shape.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

Every domain error carries its gRPC status name (``AdapterFleetError.code``); ``HTTP`` maps that name to an HTTP status
and an OpenAI error type. Anything that is not an AdapterFleetError is logged and answered as 500 without internals.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from adapterfleet.common.errors import AdapterFleetError, InvalidArgument, NotFound

log = logging.getLogger("adapterfleet.router.http")

# gRPC status name -> (HTTP status, OpenAI error type)
HTTP: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),  # yanked target, adapter that does not fit the base
    "OUT_OF_RANGE": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),       # reserved: no authentication yet
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "invalid_request_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "CANCELLED": (499, "cancelled"),
    "UNIMPLEMENTED": (501, "server_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout"),
    "DATA_LOSS": (500, "server_error"),
    "INTERNAL": (500, "server_error"),
    "UNKNOWN": (500, "server_error"),
}


class BadParam(InvalidArgument):
    """A request parameter is malformed or out of range; ``param`` names it (OpenAI's ``error.param``)."""

    def __init__(self, message: str, param: str | None, code: str | None = None):
        super().__init__(message)
        self.param, self.error_code = param, code


class ModelNotFound(NotFound):
    def __init__(self, message: str):
        super().__init__(message)
        self.param, self.error_code = "model", "model_not_found"


def error_body(err: BaseException) -> tuple[int, dict]:
    """(HTTP status, OpenAI error JSON) for any exception."""
    if isinstance(err, AdapterFleetError):
        status, kind = HTTP.get(err.code, HTTP["INTERNAL"])
        message = err.message
        param, code = getattr(err, "param", None), getattr(err, "error_code", None)
        if code is None and err.code == "NOT_FOUND":  # the only thing a request names that can be missing: its model
            param, code = "model", "model_not_found"
    else:
        log.error("unexpected error in the HTTP gateway", exc_info=err)
        status, kind = HTTP["INTERNAL"]
        message, param, code = "internal error in the router's HTTP gateway; see the router log", None, None
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(err: BaseException) -> JSONResponse:
    status, body = error_body(err)
    return JSONResponse(body, status_code=status)
