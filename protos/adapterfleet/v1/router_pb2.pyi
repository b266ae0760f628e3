from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
