"""Real gRPC servers in-process, each on its own event loop thread, bound to port 0."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from adapterfleet.store.config import StoreConfig


class ServerThread:
    """Runs an asyncio gRPC server in a background thread with its own event loop."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what still runs on the loop (as ``asyncio.run`` does at its end), then stop and close it: its
        executor's threads end too (a test session kept hundreds), and no task is left to be destroyed pending."""
        async def settle() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        with contextlib.suppress(Exception):  # a loop that cannot settle is closed anyway
            self.run(settle(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def start_store(cfg: StoreConfig):
    """Start an in-process store; returns (address, core, stop)."""
    from adapterfleet.store.server import create_store_server, make_blob_store, make_redis

    thread = ServerThread()

    async def build():
        client = make_redis(cfg.redis_url)
        store = create_store_server(cfg, client, make_blob_store(cfg))
        await store.start()
        return store, client

    store, client = thread.run(build())

    def stop():
        async def down():
            await store.stop(0)
            await client.aclose()

        thread.run(down())
        thread.close()

    return f"127.0.0.1:{store.port}", store.core, stop


def start_worker(cfg, host=None):
    """Start an in-process worker; returns (address, core, stop)."""
    handle = WorkerHandle(cfg, host)
    return handle.address, handle.core, handle.stop


class WorkerHandle:
    """An in-process worker that can stop cleanly (drain) or crash (vanish without a word)."""

    def __init__(self, cfg, host=None):
        from adapterfleet.worker.server import build_core, create_worker_server

        self._thread = ServerThread()

        async def build():
            worker = create_worker_server(cfg, build_core(cfg, host))
            await worker.start()
            return worker

        self.worker = self._thread.run(build(), timeout=120)
        self.core = self.worker.core
        self.address = f"127.0.0.1:{self.worker.port}"
        self.id = self.worker.announcer.id
        self._up = True

    def stop(self) -> None:
        if self._up:
            self._up = False
            self._thread.run(self.worker.stop(0))
            self._thread.close()

    def crash(self) -> None:
        """Like kill -9: in-flight calls break, no draining announcement; the registry entry just expires."""
        if self._up:
            self._up = False

            async def die():
                self.worker.announcer._task.cancel()
                await self.worker.server.stop(0)

            self._thread.run(die())
            self.core.engine.stop()
            self._thread.close()


def start_router(cfg):
    """Start an in-process router; returns (address, core, stop)."""
    from adapterfleet.router.server import create_router_server

    thread = ServerThread()

    async def build():
        router = create_router_server(cfg)
        await router.start()
        return router

    router = thread.run(build())

    def stop():
        thread.run(router.stop(0))
        thread.close()

    return f"127.0.0.1:{router.port}", router.core, stop
