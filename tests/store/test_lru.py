"""The count-bounded LRU that the store's presigned URLs and the worker's per-layout memos are kept in."""

from __future__ import annotations

from adapterfleet.store.lru import Lru


def test_least_recently_used_goes_first_and_pop_forgets():
    kept: Lru[int] = Lru(2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # "a" is now the most recent
    kept.put("c", 3)
    assert kept.get("b") is None and kept.get("a") == 1 and kept.get("c") == 3 and len(kept) == 2
    kept.put("a", 4)  # replacing refreshes it
    kept.pop("a")
    kept.pop("missing")
    assert kept.get("a") is None and len(kept) == 1
