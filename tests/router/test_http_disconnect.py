"""A non-streamed completion whose caller goes away stops generating: the gateway sends nothing until the whole
answer is in, and the server does not cancel a handler when the connection closes, so the gateway watches for the
disconnect itself. Driven as the ASGI server drives it (the body, then ``http.disconnect``), with a stand-in core."""

from __future__ import annotations

import asyncio
import json

from adapterfleet.router.http.app import create_app
from adapterfleet.router.http.chat import NoChatTemplate
from adapterfleet.v1 import worker_pb2

TOKENS = 200


class SlowCore:
    """Each choice: ``quick`` tokens at once, then the rest only as ``more`` allows (a long generation); records how
    far each got and whether it was closed."""

    def __init__(self, quick: int = TOKENS):
        self.quick = quick
        self.more = asyncio.Event()
        self.sent: list[int] = []
        self.closed: list[bool] = []

    def generate(self, call, deadline=None, request_id=""):
        index = len(self.sent)
        self.sent.append(0)
        self.closed.append(False)

        async def stream():
            try:
                for i in range(TOKENS):
                    if i == self.quick:
                        await self.more.wait()
                    await asyncio.sleep(0)
                    self.sent[index] += 1
                    yield worker_pb2.GenerateResponse(token_ids=[i], text="a", finished=i == TOKENS - 1,
                                                      finish_reason="length" if i == TOKENS - 1 else "",
                                                      adapter_key="acme/a@sha256:" + "ab" * 32)
            finally:
                self.closed[index] = True

        return stream()


class Catalog:
    def adapter_for(self, model: str) -> str:
        return model


def post(app, body: dict, leave: bool) -> list[dict]:
    """POST ``body`` to /v1/completions; with ``leave`` the caller disconnects right after its body, else it waits
    for the answer. Returns what was sent back."""
    data = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent: list[dict] = []

    async def main() -> None:
        done = asyncio.Event()
        messages = [{"type": "http.request", "body": data, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            if not leave:
                await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await asyncio.wait_for(app(scope, receive, send), 30)  # without the fix it never returns

    asyncio.run(main())
    return sent


def test_a_caller_that_goes_away_stops_every_choice_of_a_whole_answer():
    core = SlowCore(quick=10)
    app = create_app(core, Catalog(), NoChatTemplate())
    post(app, {"model": "acme/a", "prompt": "hi", "max_tokens": TOKENS, "n": 2}, leave=True)
    assert core.closed == [True, True] and max(core.sent) <= 10, (core.closed, core.sent)


def test_a_caller_that_stays_gets_the_whole_answer():
    core = SlowCore()
    app = create_app(core, Catalog(), NoChatTemplate())
    sent = post(app, {"model": "acme/a", "prompt": "hi", "max_tokens": TOKENS}, leave=False)
    assert sent[0]["status"] == 200
    answer = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert answer["choices"][0]["text"] == "a" * TOKENS and core.sent == [TOKENS]
