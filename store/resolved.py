"""What a client gets back from resolving a ref (a wire type both the blocking and the asyncio client return)."""

from __future__ import annotations

from dataclasses import dataclass

from adapterfleet.store.blob_urls import BlobUrl
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.targets import LiveTarget, Targets


@dataclass(frozen=True)
class Resolved:
    manifest: Manifest                 # the version chosen for this call (by routing key among weighted targets)
    key: str                           # its canonical key "name@sha256:<hex>"
    alias: str                         # set when the ref named an alias
    alias_targets: Targets             # the alias as set, yanked targets included
    targets: tuple[LiveTarget, ...]    # every live target with its key; choose among them with targets.choose
    urls: tuple[BlobUrl, ...] = ()     # presigned GET URLs of the manifest's files, when asked for (direct)
