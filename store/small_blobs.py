"""Small files a client has already verified, kept by sha256 so that the next version that carries the same bytes
does not GET them again.

Versions of one adapter, and adapters trained with one recipe, mostly share their ``adapter_config.json`` and
README byte for byte; on an object store each GET of such a file costs a round trip, whatever its size. Only bytes
that hashed to their manifest's sha256 on arrival are kept (content addressing: the same digest is the same bytes),
only files up to ``max_file`` bytes, and at most ``budget`` bytes in all, least recently used out first. A hit is
handed over as a fresh copy, so no caller shares (or can change) the kept bytes.
"""

from __future__ import annotations

from adapterfleet.store.byte_lru import ByteLru
from adapterfleet.store.manifest import FileEntry


class SmallBlobs:
    def __init__(self, max_file: int, budget: int):
        self._kept = ByteLru(budget, max_file)  # sha256 -> verified bytes

    def get(self, entry: FileEntry) -> bytearray | None:
        """A copy of the bytes of ``entry`` if they were verified before, else None."""
        data = self._kept.get(entry.sha256)
        return None if data is None or len(data) != entry.size else bytearray(data)

    def put(self, entry: FileEntry, data: bytes | bytearray) -> None:
        """Keep ``data``, which the caller checked hashes to ``entry.sha256``; too large files are not kept."""
        if len(data) == entry.size and entry.size <= self._kept.max_item and self._kept.get(entry.sha256) is None:
            self._kept.put(entry.sha256, bytes(data))

    def __len__(self) -> int:
        return len(self._kept)
