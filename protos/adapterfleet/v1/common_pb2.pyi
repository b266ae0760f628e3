from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_ACTIVE: _ClassVar[Tier]
    TIER_HOST: _ClassVar[Tier]
    TIER_DISK: _ClassVar[Tier]
    TIER_LOADING: _ClassVar[Tier]
TIER_UNSPECIFIED: Tier
TIER_ACTIVE: Tier
TIER_HOST: Tier
TIER_DISK: Tier
TIER_LOADING: Tier

class FileEntry(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BaseModelIdentity(_message.Message):
    __slots__ = ("name_or_path", "fingerprint")
    NAME_OR_PATH_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    name_or_path: str
    fingerprint: str
    def __init__(self, name_or_path: _Optional[str] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("name", "version", "digest", "files", "base_model", "peft_type", "rank", "created_at", "parent", "yanked", "signature")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PEFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    YANKED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    digest: str
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    base_model: BaseModelIdentity
    peft_type: str
    rank: int
    created_at: float
    parent: str
    yanked: bool
    signature: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., base_model: _Optional[_Union[BaseModelIdentity, _Mapping]] = ..., peft_type: _Optional[str] = ..., rank: _Optional[int] = ..., created_at: _Optional[float] = ..., parent: _Optional[str] = ..., yanked: _Optional[bool] = ..., signature: _Optional[str] = ...) -> None: ...

class AliasTarget(_message.Message):
    __slots__ = ("version", "weight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    version: int
    weight: int
    def __init__(self, version: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...
