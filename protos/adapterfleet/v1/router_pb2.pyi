from adapterfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteRequest(_message.Message):
    __slots__ = ("adapter", "routing_key", "exclude", "refresh")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    routing_key: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    refresh: bool
    def __init__(self, adapter: _Optional[str] = ..., routing_key: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ..., refresh: _Optional[bool] = ...) -> None: ...

class RouteCandidate(_message.Message):
    __slots__ = ("address", "worker_id", "region", "tier", "load")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    address: str
    worker_id: str
    region: str
    tier: _common_pb2.Tier
    load: float
    def __init__(self, address: _Optional[str] = ..., worker_id: _Optional[str] = ..., region: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., load: _Optional[float] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("adapter_key", "candidates", "ttl_seconds")
    ADAPTER_KEY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    adapter_key: str
    candidates: _containers.RepeatedCompositeFieldContainer[RouteCandidate]
    ttl_seconds: float
    def __init__(self, adapter_key: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[RouteCandidate, _Mapping]]] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class RouteOutcome(_message.Message):
    __slots__ = ("adapter_key", "worker_id", "requests", "retries", "failed", "finished")
    ADAPTER_KEY_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    adapter_key: str
    worker_id: str
    requests: int
    retries: int
    failed: int
    finished: int
    def __init__(self, adapter_key: _Optional[str] = ..., worker_id: _Optional[str] = ..., requests: _Optional[int] = ..., retries: _Optional[int] = ..., failed: _Optional[int] = ..., finished: _Optional[int] = ...) -> None: ...

class RouteReport(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[RouteOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[RouteOutcome, _Mapping]]] = ...) -> None: ...

class RouteReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RouterStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdapterRouteStats(_message.Message):
    __slots__ = ("key", "hits", "misses", "replications", "heat")
    KEY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    REPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    HEAT_FIELD_NUMBER: _ClassVar[int]
    key: str
    hits: int
    misses: int
    replications: int
    heat: float
    def __init__(self, key: _Optional[str] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., replications: _Optional[int] = ..., heat: _Optional[float] = ...) -> None: ...

class WorkerRouteStats(_message.Message):
    __slots__ = ("id", "address", "region", "load", "inflight", "healthy", "resident")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    region: str
    load: float
    inflight: int
    healthy: bool
    resident: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., region: _Optional[str] = ..., load: _Optional[float] = ..., inflight: _Optional[int] = ..., healthy: _Optional[bool] = ..., resident: _Optional[int] = ...) -> None: ...

class RouterStats(_message.Message):
    __slots__ = ("requests", "retries", "failures", "affinity_hit_rate", "adapters", "workers", "region")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    requests: int
    retries: int
    failures: int
    affinity_hit_rate: float
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterRouteStats]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerRouteStats]
    region: str
    def __init__(self, requests: _Optional[int] = ..., retries: _Optional[int] = ..., failures: _Optional[int] = ..., affinity_hit_rate: _Optional[float] = ..., adapters: _Optional[_Iterable[_Union[AdapterRouteStats, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerRouteStats, _Mapping]]] = ..., region: _Optional[str] = ...) -> None: ...
