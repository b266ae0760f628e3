"""adapterfleet: store, ship and serve PEFT LoRA adapters.

The SDK is re-exported lazily, so ``import adapterfleet`` (and ``import adapterfleet.v1...``, the generated gRPC
stubs) stays cheap; torch and peft load only when a PEFT function runs::

    from adapterfleet import AdapterStore, FleetClient, AsyncFleetClient
    from adapterfleet import from_store, load_adapter_from_store, push_from_peft
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
    "from_store": "adapterfleet.sdk.peft",
    "load_adapter_from_store": "adapterfleet.sdk.peft",
    "push_from_peft": "adapterfleet.sdk.peft",
    **{name: "adapterfleet.common.errors" for name in (
        "AdapterFleetError", "AliasConflict", "ChecksumMismatch", "FailedPrecondition", "Incompatible",
        "InvalidAdapter", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted", "Unavailable",
        "DeadlineExceeded")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterfleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*(k for k in globals() if not k.startswith("_")), *_EXPORTS} - {"Any", "annotations", "importlib"})
