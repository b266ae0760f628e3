from adapterfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushHeader(_message.Message):
    __slots__ = ("name", "alias", "base_model", "files", "parent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    base_model: _common_pb2.BaseModelIdentity
    files: _containers.RepeatedCompositeFieldContainer[_common_pb2.FileEntry]
    parent: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., base_model: _Optional[_Union[_common_pb2.BaseModelIdentity, _Mapping]] = ..., files: _Optional[_Iterable[_Union[_common_pb2.FileEntry, _Mapping]]] = ..., parent: _Optional[str] = ...) -> None: ...

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

class FetchRequest(_message.Message):
    __slots__ = ("ref", "resume_file", "resume_offset", "chunk_size", "routing_key")
    REF_FIELD_NUMBER: _ClassVar[int]
    RESUME_FILE_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    ref: str
    resume_file: str
    resume_offset: int
    chunk_size: int
    routing_key: str
    def __init__(self, ref: _Optional[str] = ..., resume_file: _Optional[str] = ..., resume_offset: _Optional[int] = ..., chunk_size: _Optional[int] = ..., routing_key: _Optional[str] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("manifest", "chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    chunk: Chunk
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("ref", "routing_key")
    REF_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    ref: str
    routing_key: str
    def __init__(self, ref: _Optional[str] = ..., routing_key: _Optional[str] = ...) -> None: ...

class Resolution(_message.Message):
    __slots__ = ("manifest", "key", "alias", "alias_targets", "targets")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ALIAS_TARGETS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    key: str
    alias: str
    alias_targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    targets: _containers.RepeatedCompositeFieldContainer[LiveTarget]
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., key: _Optional[str] = ..., alias: _Optional[str] = ..., alias_targets: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ..., targets: _Optional[_Iterable[_Union[LiveTarget, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("cursor", "type", "name", "version", "digest", "alias", "targets", "time")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[Event.Type]
        VERSION_PUSHED: _ClassVar[Event.Type]
        ALIAS_CHANGED: _ClassVar[Event.Type]
        ALIAS_DELETED: _ClassVar[Event.Type]
        VERSION_YANKED: _ClassVar[Event.Type]
    TYPE_UNSPECIFIED: Event.Type
    VERSION_PUSHED: Event.Type
    ALIAS_CHANGED: Event.Type
    ALIAS_DELETED: Event.Type
    VERSION_YANKED: Event.Type
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    type: Event.Type
    name: str
    version: int
    digest: str
    alias: str
    targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.AliasTarget]
    time: float
    def __init__(self, cursor: _Optional[str] = ..., type: _Optional[_Union[Event.Type, str]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., alias: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[_common_pb2.AliasTarget, _Mapping]]] = ..., time: _Optional[float] = ...) -> None: ...
