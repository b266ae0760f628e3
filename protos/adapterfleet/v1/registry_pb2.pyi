from adapterfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResidentAdapter(_message.Message):
    __slots__ = ("key", "tier")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    key: str
    tier: _common_pb2.Tier
    def __init__(self, key: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "address", "region", "capacity", "load", "adapters", "fingerprint", "base_model", "ttl_seconds", "draining", "announced_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    region: str
    capacity: int
    load: float
    adapters: _containers.RepeatedCompositeFieldContainer[ResidentAdapter]
    fingerprint: str
    base_model: str
    ttl_seconds: float
    draining: bool
    announced_by: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., region: _Optional[str] = ..., capacity: _Optional[int] = ..., load: _Optional[float] = ..., adapters: _Optional[_Iterable[_Union[ResidentAdapter, _Mapping]]] = ..., fingerprint: _Optional[str] = ..., base_model: _Optional[str] = ..., ttl_seconds: _Optional[float] = ..., draining: _Optional[bool] = ..., announced_by: _Optional[str] = ...) -> None: ...

class AnnounceResponse(_message.Message):
    __slots__ = ("next_in_seconds",)
    NEXT_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    next_in_seconds: float
    def __init__(self, next_in_seconds: _Optional[float] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("region",)
    REGION_FIELD_NUMBER: _ClassVar[int]
    region: str
    def __init__(self, region: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...
