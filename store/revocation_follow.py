"""Follow the store's revocations: list the revoked token ids, then watch TOKEN_REVOKED events from the cursor the
list returned (nothing falls between), adding each id to a ``Revocations`` set. Reconnects with backoff; after a
break it lists again (a stream trimmed past its cursor cannot lose an id).

Shared: the store follows its own index, routers and workers follow the store over gRPC (``source`` is anything
with ``revoked_tokens()`` and ``watch(cursor)``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from adapterfleet.common.auth import Revocations
from adapterfleet.store.events import TOKEN_REVOKED, StoreEvent

log = logging.getLogger("adapterfleet.auth")


class RevocationSource(Protocol):
    async def revoked_tokens(self) -> tuple[list[str], str]: ...

    def watch(self, cursor: str) -> AsyncIterator[StoreEvent]: ...


class RevocationFollower:
    def __init__(self, source: RevocationSource, revocations: Revocations, *, max_backoff_s: float = 5.0):
        self._source = source
        self.revocations = revocations
        self._max_backoff = max_backoff_s
        self._task: asyncio.Task | None = None
        self.synced = asyncio.Event()  # set once the first list arrived

    async def sync(self) -> str:
        ids, cursor = await self._source.revoked_tokens()
        self.revocations.add(*ids)
        self.synced.set()
        return cursor

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                cursor = await self.sync()
                delay = 0.2
                async for event in self._source.watch(cursor):
                    if event.type == TOKEN_REVOKED:
                        self.revocations.add(event.detail)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - whatever broke the stream, follow again
                log.warning("following token revocations failed (%s); retrying in %.1fs", str(err)[:200], delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
