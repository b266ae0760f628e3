"""The manifest of an adapter version and its canonical, content-addressed digest.

The digest covers what makes the bytes of a version (its files and the base model it was made for), not where
or when it was stored (name, version number, time, parent), so the same adapter has the same digest in every
region and a re-push of identical content is recognised.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.base_model import BaseModelIdentity
from adapterfleet.store.filenames import check_safe_file_names
from adapterfleet.store.refs import DIGEST_PREFIX, AdapterKey, validate_hex_digest

MANIFEST_SCHEMA = "adapterfleet.manifest/v1"


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str  # lowercase hex


@dataclass(frozen=True)
class Manifest:
    name: str
    files: tuple[FileEntry, ...]
    base_model: BaseModelIdentity = field(default_factory=BaseModelIdentity)
    peft_type: str = "LORA"
    rank: int = 0
    version: int = 0
    created_at: float = 0.0
    parent: str = ""
    yanked: bool = False
    # An OpenSSF Model Signing bundle (JSON) over the files, "" when unsigned: an attestation about the same bytes,
    # not part of them, so the digest does not cover it (signing a version never changes its identity).
    signature: str = ""

    @cached_property
    def digest(self) -> str:
        """Worked out once per object (it is frozen): a Resolve asks for it several times, and the canonical JSON
        and its hash were ~8% of the store's CPU per Resolve."""
        return DIGEST_PREFIX + hashlib.sha256(self.canonical_bytes()).hexdigest()

    @property
    def key(self) -> AdapterKey:
        return AdapterKey(self.name, self.digest)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise InvalidArgument(f"{self.key} has no file {name!r}; its files are {[f.name for f in self.files]}")

    def canonical_bytes(self) -> bytes:
        """The content that the digest covers: sorted files and the base-model identity, compact JSON."""
        body = {
            "schema": MANIFEST_SCHEMA,
            "files": [asdict(f) for f in sorted(self.files, key=lambda f: f.name)],
            "base_model": asdict(self.base_model),
            "peft_type": self.peft_type,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        """Everything, for storage in the index (the version number and yank flag live beside it)."""
        record = asdict(self)
        record.pop("version")
        record.pop("yanked")
        if not record["signature"]:
            record.pop("signature")
        return json.dumps(record, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, version: int = 0, yanked: bool = False) -> Manifest:
        data = json.loads(text)
        files = tuple(FileEntry(**f) for f in data["files"])
        check_safe_file_names([f.name for f in files], source="a stored manifest")
        return cls(
            name=data["name"],
            files=files,
            base_model=BaseModelIdentity(**data.get("base_model", {})),
            peft_type=data.get("peft_type", "LORA"),
            rank=int(data.get("rank", 0)),
            created_at=float(data.get("created_at", 0.0)),
            parent=data.get("parent", ""),
            version=version,
            yanked=yanked,
            signature=data.get("signature", ""),
        )

    def with_version(self, version: int, yanked: bool = False) -> Manifest:
        return replace(self, version=version, yanked=yanked)


def check_file_entries(files: list[FileEntry]) -> None:
    for entry in files:
        validate_hex_digest(entry.sha256, f"sha256 of {entry.name!r}")
        if entry.size < 0:
            raise InvalidArgument(f"file {entry.name!r} has a negative size")
