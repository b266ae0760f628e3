"""Real gRPC servers in-process, each on its own event loop thread, bound to port 0."""

from __future__ import annotations

import asyncio
import threading

from store.config import StoreConfig


class ServerThread:
    """Runs an asyncio gRPC server in a background thread with its own event loop."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def start_store(cfg: StoreConfig):
    """Start an in-process store; returns (address, core, stop)."""
    from store.server import create_store_server, make_blob_store, make_redis

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
    from services.worker.server import build_core, create_worker_server

    thread = ServerThread()

    async def build():
        core = build_core(cfg, host)
        worker = create_worker_server(cfg, core)
        await worker.start()
        return worker

    worker = thread.run(build(), timeout=120)

    def stop():
        thread.run(worker.stop(0))
        worker.core.engine.stop()
        thread.close()

    return f"127.0.0.1:{worker.port}", worker.core, stop
