from adapterfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartRolloutRequest(_message.Message):
    __slots__ = ("name", "alias", "to_version", "steps", "interval_seconds", "max_error_rate", "max_p99_ms", "min_requests", "regions", "no_warm", "warm_timeout_seconds", "has_max_error_rate", "has_min_requests")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    NO_WARM_FIELD_NUMBER: _ClassVar[int]
    WARM_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HAS_MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    HAS_MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    to_version: int
    steps: _containers.RepeatedScalarFieldContainer[int]
    interval_seconds: float
    max_error_rate: float
    max_p99_ms: float
    min_requests: int
    regions: _containers.RepeatedScalarFieldContainer[str]
    no_warm: bool
    warm_timeout_seconds: float
    has_max_error_rate: bool
    has_min_requests: bool
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., to_version: _Optional[int] = ..., steps: _Optional[_Iterable[int]] = ..., interval_seconds: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., max_p99_ms: _Optional[float] = ..., min_requests: _Optional[int] = ..., regions: _Optional[_Iterable[str]] = ..., no_warm: _Optional[bool] = ..., warm_timeout_seconds: _Optional[float] = ..., has_max_error_rate: _Optional[bool] = ..., has_min_requests: _Optional[bool] = ...) -> None: ...

class RolloutRef(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutStatus]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[RolloutStatus, _Mapping]]] = ...) -> None: ...

class VersionFigures(_message.Message):
    __slots__ = ("version", "requests", "errors", "error_rate", "p99_ms", "error_classes")
    class ErrorClassesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASSES_FIELD_NUMBER: _ClassVar[int]
    version: int
    requests: int
    errors: int
    error_rate: float
    p99_ms: float
    error_classes: _containers.ScalarMap[str, int]
    def __init__(self, version: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., p99_ms: _Optional[float] = ..., error_classes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GateReport(_message.Message):
    __slots__ = ("old", "new", "window_seconds", "verdict", "judged_at", "region")
    OLD_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    JUDGED_AT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    old: VersionFigures
    new: VersionFigures
    window_seconds: float
    verdict: str
    judged_at: float
    region: str
    def __init__(self, old: _Optional[_Union[VersionFigures, _Mapping]] = ..., new: _Optional[_Union[VersionFigures, _Mapping]] = ..., window_seconds: _Optional[float] = ..., verdict: _Optional[str] = ..., judged_at: _Optional[float] = ..., region: _Optional[str] = ...) -> None: ...

class RolloutEvent(_message.Message):
    __slots__ = ("time", "kind", "detail")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    time: float
    kind: str
    detail: str
    def __init__(self, time: _Optional[float] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("name", "alias", "from_version", "to_version", "state", "step", "steps", "weights", "gates", "reason", "interval_seconds", "max_error_rate", "max_p99_ms", "min_requests", "regions", "region_index", "warm", "warm_note", "owner", "created_at", "updated_at", "step_started_at", "pending_command", "history")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    REGION_INDEX_FIELD_NUMBER: _ClassVar[int]
    WARM_FIELD_NUMBER: _ClassVar[int]
    WARM_NOTE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    PENDING_COMMAND_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    from_version: int
    to_version: int
    state: str
    step: int
    steps: _containers.RepeatedScalarFieldContainer[int]
    weights: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    gates: GateReport
    reason: str
    interval_seconds: float
    max_error_rate: float
    max_p99_ms: float
    min_requests: int
    regions: _containers.RepeatedScalarFieldContainer[str]
    region_index: int
    warm: bool
    warm_note: str
    owner: str
    created_at: float
    updated_at: float
    step_started_at: float
    pending_command: str
    history: _containers.RepeatedCompositeFieldContainer[RolloutEvent]
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[_Iterable[int]] = ..., weights: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ..., gates: _Optional[_Union[GateReport, _Mapping]] = ..., reason: _Optional[str] = ..., interval_seconds: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., max_p99_ms: _Optional[float] = ..., min_requests: _Optional[int] = ..., regions: _Optional[_Iterable[str]] = ..., region_index: _Optional[int] = ..., warm: _Optional[bool] = ..., warm_note: _Optional[str] = ..., owner: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., step_started_at: _Optional[float] = ..., pending_command: _Optional[str] = ..., history: _Optional[_Iterable[_Union[RolloutEvent, _Mapping]]] = ...) -> None: ...

class VersionWindow(_message.Message):
    __slots__ = ("key", "requests", "errors", "latency_counts")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    requests: int
    errors: _containers.ScalarMap[str, int]
    latency_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[_Mapping[str, int]] = ..., latency_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class VersionStatsReport(_message.Message):
    __slots__ = ("router", "region", "windows")
    ROUTER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    router: str
    region: str
    windows: _containers.RepeatedCompositeFieldContainer[VersionWindow]
    def __init__(self, router: _Optional[str] = ..., region: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[VersionWindow, _Mapping]]] = ...) -> None: ...

class ReportVersionStatsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
