"""Run the gateway with uvicorn on the router's own event loop, beside its gRPC server.

The socket is bound here (port 0 -> a free one, known before serving), and uvicorn gets it. The router process owns
SIGINT/SIGTERM (it drains gRPC and HTTP together), so uvicorn's own signal capture is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterator

import uvicorn

from adapterfleet.common.auth import Authenticator
from adapterfleet.common.errors import Unavailable
from adapterfleet.router.http.app import create_app
from adapterfleet.router.http.bearer import BearerAuth
from adapterfleet.router.http.chat import load_chat_template
from adapterfleet.router.http.models import ModelCatalog
from adapterfleet.router.proxy import RouterCore
from adapterfleet.store.aio_client import AsyncStoreClient

log = logging.getLogger("adapterfleet.router.http")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the router's drain handles signals
        yield


class HttpGateway:
    """The OpenAI-compatible front door: ``start`` binds and serves, ``stop`` drains. No side effects before start."""

    def __init__(self, core: RouterCore, store: AsyncStoreClient, *, host: str, port: int,
                 tokenizer: str | None = None, authenticator: Authenticator | None = None):
        self.core, self.store, self.host, self.port, self.tokenizer = core, store, host, port, tokenizer
        self.authenticator = authenticator  # set: every path but /health needs the caller's bearer token
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        chat = await asyncio.to_thread(load_chat_template, self.tokenizer)
        starlette = create_app(self.core, ModelCatalog(self.core.membership, self.store), chat)
        app = starlette if self.authenticator is None else BearerAuth(starlette, self.authenticator)
        try:
            sock = socket.create_server((self.host, self.port))
        except OSError as err:
            raise Unavailable(f"the HTTP gateway cannot listen on {self.host}:{self.port}: {err.strerror or err}; "
                              "choose another --http-port (0: any free port)") from None
        self.port = sock.getsockname()[1]
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its "Started ..." lines: our line says it
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False)
        self._server = server = _Server(config)
        self._task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped it
                raise Unavailable(f"the HTTP gateway on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)
        log.info("OpenAI-compatible HTTP gateway on http://%s:%d/v1", self.host, self.port)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting, give in-flight requests ``grace`` seconds, then cancel what is left."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.config.timeout_graceful_shutdown = math.ceil(grace or 0)
        server.should_exit = True
        await task
