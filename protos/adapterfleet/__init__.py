"""adapterfleet: store, ship and serve PEFT LoRA adapters.

The SDK is re-exported lazily, so ``import adapterfleet`` (and ``import adapterfleet.v1...``, the generated gRPC
stubs) stays cheap; torch and peft load only when a PEFT function runs::

    from adapterfleet import AdapterStore, FleetClient, AsyncFleetClient
    from adapterfleet import from_store, load_adapter_from_store, push_from_peft

``adapterfleet.__version__`` is the installed distribution's version (read when first asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AdapterStore": "adapterfleet.sdk.store",
    "FleetClient": "adapterfleet.sdk.fleet",
    "AsyncFleetClient": "adapterfleet.sdk.fleet_aio",
    "Generation": "adapterfleet.sdk.fleet",
    "GenerationChunk": "adapterfleet.sdk.fleet",
    "Scores": "adapterfleet.sdk.fleet",
    "RouterStats": "adapterfleet.sdk.fleet",
    "AdapterState": "adapterfleet.sdk.admin",
    "WorkerStats": "adapterfleet.sdk.admin",
    "Rollouts": "adapterfleet.sdk.rollouts",
    "RolloutStatus": "adapterfleet.sdk.rollouts",
    "from_store": "adapterfleet.sdk.peft",
    "load_adapter_from_store": "adapterfleet.sdk.peft",
    "push_from_peft": "adapterfleet.sdk.peft",
    "ClientSecurity": "adapterfleet.common.security_config",
    **{name: "adapterfleet.common.errors" for name in (
        "AdapterFleetError", "AliasConflict", "ChecksumMismatch", "FailedPrecondition", "Incompatible",
        "InvalidAdapter", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted", "Unavailable",
        "DeadlineExceeded", "Unauthenticated", "RateLimited", "SignatureRejected", "UnsafeFileName")},
}
__all__ = sorted(_EXPORTS)
_UNKNOWN_VERSION = "0+unknown"  # __version__ when the distribution is not installed (a bare source checkout)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - only when asked

    try:
        return version("adapterfleet")
    except PackageNotFoundError:
        return _UNKNOWN_VERSION


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'adapterfleet' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*(k for k in globals() if not k.startswith("_")), *_EXPORTS, "__version__"}
                  - {"Any", "annotations", "importlib"})
