"""A thread-safe LRU of immutable bytes by key (a sha256), bounded in bytes: at most ``max_item`` per entry and
``budget`` in all, least recently used out first. The store's blob cache and the clients' small-file cache keep
their bytes in one."""

from __future__ import annotations

import threading
from collections import OrderedDict


class ByteLru:
    def __init__(self, budget: int, max_item: int):
        self.budget = budget
        self.max_item = max_item
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key`` (replacing what was there); too large an entry is not kept."""
        if len(data) > min(self.max_item, self.budget):
            return
        with self._lock:
            self._drop(key)
            self._items[key] = data
            self.nbytes += len(data)
            while self.nbytes > self.budget:
                _, old = self._items.popitem(last=False)
                self.nbytes -= len(old)

    def pop(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= len(old)

    def __len__(self) -> int:
        return len(self._items)
