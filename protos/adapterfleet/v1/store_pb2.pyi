from adapterfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushHeader(_message.Message):
    __slots__ = ("name", "alias", "base_model", "files", "parent", "signature")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    base_model: _common_pb2.BaseModelIdentity
    files: _containers.RepeatedCompositeFieldContainer[_common_pb2.FileEntry]
    parent: str
    signature: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., base_model: _Optional[_Union[_common_pb2.BaseModelIdentity, _Mapping]] = ..., files: _Optional[_Iterable[_Union[_common_pb2.FileEntry, _Mapping]]] = ..., parent: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("file", "offset", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: str
    offset: int
    data: bytes
    def __init__(self, file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("manifest", "created", "bytes_received", "bytes_deduplicated")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    created: bool
    bytes_received: int
    bytes_deduplicated: int
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., created: _Optional[bool] = ..., bytes_received: _Optional[int] = ..., bytes_deduplicated: _Optional[int] = ...) -> None: ...

class MissingBlobsRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class MissingBlobsResponse(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportCorruptRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportCorruptResponse(_message.Message):
    __slots__ = ("quarantined",)
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    quarantined: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, quarantined: _Optional[_Iterable[str]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("ref", "resume_file", "resume_offset", "chunk_size", "routing_key", "direct")
    REF_FIELD_NUMBER: _ClassVar[int]
    RESUME_FILE_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    ref: str
    resume_file: str
    resume_offset: int
    chunk_size: int
    routing_key: str
    direct: bool
    def __init__(self, ref: _Optional[str] = ..., resume_file: _Optional[str] = ..., resume_offset: _Optional[int] = ..., chunk_size: _Optional[int] = ..., routing_key: _Optional[str] = ..., direct: _Optional[bool] = ...) -> None: ...

class BlobUrl(_message.Message):
    __slots__ = ("file", "url", "expires_in_s")
    FILE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    file: str
    url: str
    expires_in_s: float
    def __init__(self, file: _Optional[str] = ..., url: _Optional[str] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class BlobUrls(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[BlobUrl]
    def __init__(self, files: _Optional[_Iterable[_Union[BlobUrl, _Mapping]]] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("manifest", "chunk", "urls")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    chunk: Chunk
    urls: BlobUrls
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., urls: _Optional[_Union[BlobUrls, _Mapping]] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("ref", "routing_key", "region", "direct")
    REF_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    ref: str
    routing_key: str
    region: str
    direct: bool
    def __init__(self, ref: _Optional[str] = ..., routing_key: _Optional[str] = ..., region: _Optional[str] = ..., direct: _Optional[bool] = ...) -> None: ...

class Resolution(_message.Message):
    __slots__ = ("manifest", "key", "alias", "alias_targets", "targets", "urls")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ALIAS_TARGETS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    key: str
    alias: str
    alias_targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    targets: _containers.RepeatedCompositeFieldContainer[LiveTarget]
    urls: BlobUrls
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., key: _Optional[str] = ..., alias: _Optional[str] = ..., alias_targets: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ..., targets: _Optional[_Iterable[_Union[LiveTarget, _Mapping]]] = ..., urls: _Optional[_Union[BlobUrls, _Mapping]] = ...) -> None: ...

class LiveTarget(_message.Message):
    __slots__ = ("version", "weight", "key")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    version: int
    weight: int
    key: str
    def __init__(self, version: _Optional[int] = ..., weight: _Optional[int] = ..., key: _Optional[str] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class AdapterSummary(_message.Message):
    __slots__ = ("name", "latest_version", "version_count", "aliases")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: int
    version_count: int
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[int] = ..., version_count: _Optional[int] = ..., aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterSummary]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterSummary, _Mapping]]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "aliases")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Manifest]
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    def __init__(self, versions: _Optional[_Iterable[_Union[_common_pb2.Manifest, _Mapping]]] = ..., aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("name", "alias", "targets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ...) -> None: ...

class AliasExpectation(_message.Message):
    __slots__ = ("absent", "targets")
    ABSENT_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    absent: bool
    targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    def __init__(self, absent: _Optional[bool] = ..., targets: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "targets", "expect")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    EXPECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    expect: AliasExpectation
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ..., expect: _Optional[_Union[AliasExpectation, _Mapping]] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "expect")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    EXPECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    expect: AliasExpectation
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., expect: _Optional[_Union[AliasExpectation, _Mapping]] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class YankVersionRequest(_message.Message):
    __slots__ = ("name", "version", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class CollectGarbageRequest(_message.Message):
    __slots__ = ("dry_run", "min_age_seconds")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MIN_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    min_age_seconds: float
    def __init__(self, dry_run: _Optional[bool] = ..., min_age_seconds: _Optional[float] = ...) -> None: ...

class CollectGarbageResponse(_message.Message):
    __slots__ = ("deleted", "bytes_freed", "kept_referenced", "kept_leased", "aborted_uploads")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    KEPT_REFERENCED_FIELD_NUMBER: _ClassVar[int]
    KEPT_LEASED_FIELD_NUMBER: _ClassVar[int]
    ABORTED_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    kept_referenced: int
    kept_leased: int
    aborted_uploads: int
    def __init__(self, deleted: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ..., kept_referenced: _Optional[int] = ..., kept_leased: _Optional[int] = ..., aborted_uploads: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("cursor", "name")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    name: str
    def __init__(self, cursor: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("cursor", "type", "name", "version", "digest", "alias", "targets", "time", "detail")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[Event.Type]
        VERSION_PUSHED: _ClassVar[Event.Type]
        ALIAS_CHANGED: _ClassVar[Event.Type]
        ALIAS_DELETED: _ClassVar[Event.Type]
        VERSION_YANKED: _ClassVar[Event.Type]
        ROLLOUT_CHANGED: _ClassVar[Event.Type]
        TOKEN_REVOKED: _ClassVar[Event.Type]
    TYPE_UNSPECIFIED: Event.Type
    VERSION_PUSHED: Event.Type
    ALIAS_CHANGED: Event.Type
    ALIAS_DELETED: Event.Type
    VERSION_YANKED: Event.Type
    ROLLOUT_CHANGED: Event.Type
    TOKEN_REVOKED: Event.Type
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    type: Event.Type
    name: str
    version: int
    digest: str
    alias: str
    targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    time: float
    detail: str
    def __init__(self, cursor: _Optional[str] = ..., type: _Optional[_Union[Event.Type, str]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., alias: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ..., time: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id", "expires")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    expires: float
    def __init__(self, token_id: _Optional[str] = ..., expires: _Optional[float] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("cursor",)
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    def __init__(self, cursor: _Optional[str] = ...) -> None: ...

class ListRevokedTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRevokedTokensResponse(_message.Message):
    __slots__ = ("token_ids", "cursor")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    def __init__(self, token_ids: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("since",)
    SINCE_FIELD_NUMBER: _ClassVar[int]
    since: str
    def __init__(self, since: _Optional[str] = ...) -> None: ...

class StoreStatus(_message.Message):
    __slots__ = ("role", "region", "primary", "replicate", "cursor", "lag_events", "lag_seconds", "blobs_pending", "connected", "resyncs", "events_applied", "last_error", "last_event", "first_event", "entries_added", "events_after", "oldest_after_time", "checked_at", "last_resync", "stream_length")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    REPLICATE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LAG_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_EVENT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_ADDED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_AFTER_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AFTER_TIME_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RESYNC_FIELD_NUMBER: _ClassVar[int]
    STREAM_LENGTH_FIELD_NUMBER: _ClassVar[int]
    role: str
    region: str
    primary: str
    replicate: str
    cursor: str
    lag_events: int
    lag_seconds: float
    blobs_pending: int
    connected: bool
    resyncs: int
    events_applied: int
    last_error: str
    last_event: str
    first_event: str
    entries_added: int
    events_after: int
    oldest_after_time: float
    checked_at: float
    last_resync: str
    stream_length: int
    def __init__(self, role: _Optional[str] = ..., region: _Optional[str] = ..., primary: _Optional[str] = ..., replicate: _Optional[str] = ..., cursor: _Optional[str] = ..., lag_events: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., blobs_pending: _Optional[int] = ..., connected: _Optional[bool] = ..., resyncs: _Optional[int] = ..., events_applied: _Optional[int] = ..., last_error: _Optional[str] = ..., last_event: _Optional[str] = ..., first_event: _Optional[str] = ..., entries_added: _Optional[int] = ..., events_after: _Optional[int] = ..., oldest_after_time: _Optional[float] = ..., checked_at: _Optional[float] = ..., last_resync: _Optional[str] = ..., stream_length: _Optional[int] = ...) -> None: ...
