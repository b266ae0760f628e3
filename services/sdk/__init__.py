"""The Python SDK of adapterfleet: a thin, typed layer over the store and fleet clients.

    from adapterfleet import AdapterStore, FleetClient, from_store

    with AdapterStore("store:50051") as store:
        store.push("out/adapter", "acme/summarizer", alias="prod")
    with FleetClient("router:50071") as fleet:
        print(fleet.generate("Hello", adapter="acme/summarizer@prod").text)
    with FleetClient("worker:50061") as worker:      # a worker's adapters: load_adapter, pin, resident, ...
        print([a.key for a in worker.resident()])
    model = from_store(base_model, "acme/summarizer@prod", store="store:50051")   # needs adapterfleet[peft]

Importing this package imports neither torch nor peft; the PEFT functions import them when called.
"""

from adapterfleet.common.errors import (
    AdapterFleetError,
    ChecksumMismatch,
    FailedPrecondition,
    Incompatible,
    InvalidAdapter,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from adapterfleet.sdk.admin import AdapterState, WorkerStats
from adapterfleet.sdk.fleet import FleetClient, Generation, GenerationChunk, RouterStats, Scores
from adapterfleet.sdk.fleet_aio import AsyncFleetClient
from adapterfleet.sdk.peft import from_store, load_adapter_from_store, push_from_peft
from adapterfleet.sdk.store import AdapterStore, AdapterSummary, LocalAdapter, Versions
from adapterfleet.store.client import PushOutcome, Resolved

__all__ = [
    "AdapterFleetError", "AdapterState", "AdapterStore", "AdapterSummary", "AsyncFleetClient", "ChecksumMismatch",
    "FailedPrecondition", "FleetClient", "Generation", "GenerationChunk", "Incompatible", "InvalidAdapter",
    "InvalidArgument", "LocalAdapter", "NotFound", "PushOutcome", "Resolved", "RouterStats", "Scores",
    "Unavailable", "Versions", "WorkerStats", "from_store", "load_adapter_from_store", "push_from_peft",
]
