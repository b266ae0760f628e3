"""The gateway's ASGI app (Starlette): OpenAI's completions, chat completions and models, over one RouterCore.

    POST /v1/completions        prompt (text, token ids, or a list of either) -> n choices each
    POST /v1/chat/completions   messages -> the base model's chat template -> prompt ids -> n choices
    GET  /v1/models             the base model, every adapter (latest version) and alias
    GET  /health                200 while the router serves

Every error, whatever raised it, leaves as OpenAI's error JSON with the status of ``errors.HTTP``. A stream's first
message is awaited before the response starts, so an unknown model or a fleet with no worker is a real 404 / 503,
not a 200 with an error inside; an error after that is sent as an ``error`` event before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from adapterfleet.common import auth
from adapterfleet.common.channel import REQUEST_ID_HEADER
from adapterfleet.common.errors import AdapterFleetError, InvalidArgument, NotFound
from adapterfleet.router.http import schemas
from adapterfleet.router.http.chat import ChatTemplate, NoChatTemplate
from adapterfleet.router.http.errors import BadParam, error_body, error_response
from adapterfleet.router.http.models import ModelCatalog
from adapterfleet.router.http.streams import DONE, event, merged
from adapterfleet.router.http.translate import Choice, Responder, generate_requests
from adapterfleet.router.proxy import RouterCore
from adapterfleet.v1 import worker_pb2

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_BODY_BYTES = 16 << 20  # a request body; prompts this long do not fit any model the fleet serves anyway


class Gateway:
    def __init__(self, core: RouterCore, catalog: ModelCatalog, chat: ChatTemplate | NoChatTemplate):
        self.core, self.catalog, self.chat = core, catalog, chat

    # --- endpoints ----------------------------------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        rid = _request_id(request)
        try:
            req = schemas.parse(schemas.CompletionRequest, await _body(request))
            adapter = self.catalog.adapter_for(req.model)
            auth.require(auth.SERVE, "generating", auth.ref_name(adapter))
            calls = generate_requests(req, adapter, req.prompts)
        except Exception as err:  # noqa: BLE001 - every failure becomes OpenAI's error JSON
            return _error(err, rid)
        return await self._answer(req, calls, Responder(False, req.model, req.logprobs is not None), rid, request)

    async def chat_completions(self, request: Request) -> Response:
        rid = _request_id(request)
        try:
            req = schemas.parse(schemas.ChatCompletionRequest, await _body(request))
            adapter = self.catalog.adapter_for(req.model)
            auth.require(auth.SERVE, "generating", auth.ref_name(adapter))
            messages = [m.as_template_input() for m in req.messages]
            ids = await asyncio.to_thread(self.chat.prompt_ids, messages)  # a long chat takes a while to encode
            calls = generate_requests(req, adapter, [ids])
        except Exception as err:  # noqa: BLE001
            return _error(err, rid)
        return await self._answer(req, calls, Responder(True, req.model, req.logprobs), rid, request)

    async def models(self, request: Request) -> Response:
        try:
            auth.require((auth.SERVE, auth.READ), "listing models")  # what a caller of the API may name
            return JSONResponse({"object": "list", "data": await self.catalog.listing()})
        except Exception as err:  # noqa: BLE001
            return _error(err, _request_id(request))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    # --- answering ------------------------------------------------------------------------------------------------
    def _events(self, calls: list[worker_pb2.GenerateRequest],
                rid: str) -> AsyncGenerator[tuple[int, worker_pb2.GenerateResponse], None]:
        streams = [self.core.generate(call, deadline=None, request_id=f"{rid}-{i}" if len(calls) > 1 else rid)
                   for i, call in enumerate(calls)]
        return merged(streams)

    async def _answer(self, req: schemas._Sampling, calls: list[worker_pb2.GenerateRequest], out: Responder,
                      rid: str, request: Request) -> Response:
        events = self._events(calls, rid)
        choices = [Choice(i) for i in range(len(calls))]
        if not req.stream:
            # the whole answer is collected before any byte is sent, so nothing would notice a caller that goes
            # away (the server does not cancel a handler): its disconnect stops every choice's generation
            collecting = asyncio.ensure_future(_collect(events, choices))
            gone = asyncio.ensure_future(_disconnected(request))
            try:
                await asyncio.wait((collecting, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not collecting.done():
                    collecting.cancel()
                    await asyncio.wait((collecting,))
            if collecting.cancelled():
                return Response(status_code=499)  # nobody reads it: the caller has gone
            if (err := collecting.exception()) is not None:
                return _error(err, rid)
            return JSONResponse(out.response(choices, req.n), headers={REQUEST_ID_HEADER: rid})
        try:  # the first message decides the status: 404 / 503 before any byte of a 200
            first = await anext(events)
        except StopAsyncIteration:
            return _error(AdapterFleetError("the fleet ended the stream without an answer"), rid)
        except Exception as err:  # noqa: BLE001
            return _error(err, rid)
        body = self._sse(req, events, first, choices, out)
        return StreamingResponse(body, media_type="text/event-stream", headers={**SSE_HEADERS, REQUEST_ID_HEADER: rid})

    async def _sse(self, req: schemas._Sampling, events: AsyncGenerator[tuple[int, worker_pb2.GenerateResponse], None],
                   first: tuple[int, worker_pb2.GenerateResponse], choices: list[Choice],
                   out: Responder) -> AsyncIterator[bytes]:
        with_usage = req.include_usage

        def chunk(obj: dict) -> bytes:
            if with_usage:
                obj["usage"] = None  # as OpenAI: every chunk has the key; the last one carries the numbers
            return event(obj)

        try:
            if out.chat:
                for c in choices:
                    yield chunk(out.role_chunk(c.index))
            pending: tuple[int, worker_pb2.GenerateResponse] | None = first
            while pending is not None:
                i, msg = pending
                offset = len(choices[i].text)
                choices[i].add(msg)
                if msg.text or msg.finished or (out.want_logprobs and msg.token_ids):
                    yield chunk(out.chunk(i, msg, offset))
                pending = await anext(events, None)
            if with_usage:
                yield event(out.usage_chunk(choices, req.n))
        except Exception as err:  # noqa: BLE001 - the status is sent already: the error goes in the stream
            yield event(error_body(err)[1])
        finally:
            await events.aclose()
        yield DONE


async def _collect(events: AsyncGenerator[tuple[int, worker_pb2.GenerateResponse], None],
                   choices: list[Choice]) -> None:
    async with contextlib.aclosing(events):  # closed: every choice's call is cancelled
        async for i, msg in events:
            choices[i].add(msg)


async def _disconnected(request: Request) -> None:
    """Returns once the caller has gone. After the body, the server's next message is ``http.disconnect``: when the
    connection closes, or when the response has been sent (this is cancelled before that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(request: Request) -> bytes:
    """The body, read up to MAX_BODY_BYTES (BadParam past that, before reading the rest)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadParam(f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", None, "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_id(request: Request) -> str:
    return request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


def _error(err: BaseException, rid: str) -> JSONResponse:
    response = error_response(err)
    response.headers[REQUEST_ID_HEADER] = rid
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, wrong method) in OpenAI's shape too."""
    assert isinstance(exc, HTTPException)
    err: AdapterFleetError = NotFound(f"no route {request.method} {request.url.path}; the gateway serves "
                                      "/v1/completions, /v1/chat/completions and /v1/models") \
        if exc.status_code == 404 else InvalidArgument(f"{request.method} {request.url.path}: {exc.detail}")
    status, body = error_body(err)
    body["error"]["param"] = body["error"]["code"] = None
    return JSONResponse(body, status_code=exc.status_code if exc.status_code >= 400 else status)


def create_app(core: RouterCore, catalog: ModelCatalog, chat: ChatTemplate | NoChatTemplate) -> Starlette:
    gateway = Gateway(core, catalog, chat)
    routes = [
        Route("/v1/completions", gateway.completions, methods=["POST"]),
        Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/health", gateway.health, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
