"""The router's OpenAI-compatible HTTP gateway, called with the official `openai` client as users call it: a real store,
a real worker (tiny Llama with the character tokenizer), a router with gRPC and HTTP on free ports."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
import warnings

import grpc
import httpx
import openai
import pytest

from adapterfleet.common import errors
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.http.errors import error_body
from adapterfleet.store.config import Limits, S3Config, StoreConfig
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import ServerThread, WorkerHandle, start_store
from tests.helpers.tokenizer import save_char_tokenizer

PROMPT = "hello:"


def start_router(cfg: RouterConfig):
    """An in-process router with its HTTP gateway; returns (grpc address, http base url, stop)."""
    from adapterfleet.router.server import create_router_server

    thread = ServerThread()

    async def build():
        router = create_router_server(cfg)
        await router.start()
        return router

    router = thread.run(build(), timeout=60)

    def stop():
        thread.run(router.stop(0))
        thread.close()

    return f"127.0.0.1:{router.port}", f"http://127.0.0.1:{router.http_port}/v1", router, stop


def store_config(redis_server, s3_server, root) -> StoreConfig:
    return StoreConfig(port=0, redis_url=redis_server.url, redis_prefix=f"t{uuid.uuid4().hex[:8]}:",
                       s3=S3Config(endpoint_url=s3_server, bucket=f"t-{uuid.uuid4().hex[:12]}", access_key_id="test",
                                   secret_access_key="test"),
                       data_dir=str(root / "store"), blob_cache_bytes=0, limits=Limits(max_rank=64))


@pytest.fixture(scope="module")
def fleet(redis_server, s3_server, tmp_path_factory):
    """Store + one worker + a router serving HTTP; adapters acme/a0 (alias prod) and acme/a1."""
    root = tmp_path_factory.mktemp("http_fleet")
    base = make_base_model("llama", root / "base", seed=0)
    save_char_tokenizer(base, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapters = [make_peft_adapter(base, root / f"a{i}", seed=i + 1, r=4, target_modules=["q_proj", "v_proj"])
                    for i in range(2)]
    store_address, _, stop_store = start_store(store_config(redis_server, s3_server, root))
    from adapterfleet.store.client import StoreClient

    with StoreClient(store_address) as c:
        keys = [str(c.push_dir(a, f"acme/a{i}", alias="prod" if i == 0 else None).manifest.key)
                for i, a in enumerate(adapters)]
    worker = WorkerHandle(WorkerConfig(base_model=str(base), store=store_address, max_slots=4,
                                       disk_dir=str(root / "w0"), announce_every_s=0.2, announce_ttl_s=2.0))
    grpc_address, url, router, stop_router = start_router(
        RouterConfig(store=store_address, poll_s=0.1, http_port=0, tokenizer=str(base)))
    deadline = time.monotonic() + 10
    while not router.core.membership.views():
        assert time.monotonic() < deadline, "the worker never showed up in the router's view"
        time.sleep(0.05)

    class Fleet:
        pass

    f = Fleet()
    f.grpc, f.url, f.keys, f.store, f.root = grpc_address, url, keys, store_address, root
    f.channel = grpc.insecure_channel(grpc_address)
    yield f
    f.channel.close()
    stop_router()
    worker.stop()
    stop_store()


@pytest.fixture(scope="module")
def client(fleet):
    with openai.OpenAI(base_url=fleet.url, api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def grpc_text(fleet, adapter: str, max_new_tokens: int, *, prompt: str = PROMPT, **sampling) -> tuple[str, int]:
    """(text, tokens) of the router's gRPC Generate for the same request."""
    request = worker_pb2.GenerateRequest(adapter=adapter, prompt=prompt, max_new_tokens=max_new_tokens,
                                         sampling=worker_pb2.SamplingParams(**sampling))
    messages = list(worker_pb2_grpc.WorkerStub(fleet.channel).Generate(request, timeout=60))
    return "".join(m.text for m in messages), sum(len(m.token_ids) for m in messages)


# --- completions --------------------------------------------------------------------------------------------------
def test_a_greedy_completion_equals_grpc_generate(fleet, client):
    out = client.completions.create(model="acme/a0@prod", prompt=PROMPT, max_tokens=8, temperature=0)
    text, tokens = grpc_text(fleet, "acme/a0@prod", 8, temperature=0.0)
    assert out.choices[0].text == text and tokens > 0
    assert out.choices[0].finish_reason in ("stop", "length") and out.object == "text_completion"
    assert out.usage.prompt_tokens == len(PROMPT)  # one character, one token
    assert out.usage.completion_tokens == tokens
    assert out.usage.total_tokens == len(PROMPT) + tokens
    assert out.model == "acme/a0@prod" and out.system_fingerprint == fleet.keys[0]


@pytest.mark.parametrize("model", ["acme/a1", "acme/a1@1", None])
def test_every_form_of_ref_serves(fleet, client, model):
    model = model or fleet.keys[1]  # acme/a1@sha256:...
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0)
    assert out.choices[0].text == grpc_text(fleet, fleet.keys[1], 6, temperature=0.0)[0]
    assert out.system_fingerprint == fleet.keys[1]


def test_the_base_model_by_name(fleet, client):
    out = client.completions.create(model="base", prompt=PROMPT, max_tokens=6, temperature=0)
    assert out.choices[0].text == grpc_text(fleet, "", 6, temperature=0.0)[0]
    assert out.system_fingerprint is None
    assert client.completions.create(model=str(fleet.root / "base"), prompt=PROMPT, max_tokens=6,
                                     temperature=0).choices[0].text == out.choices[0].text


def test_a_streamed_completion_equals_the_whole_one(client):
    whole = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_a_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=4, temperature=0,
                                            stream=True))
    assert chunks and all(c.choices for c in chunks)


def test_n_choices_and_prompts_fan_out(fleet, client):
    out = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7, n=2)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage.prompt_tokens == len(PROMPT)  # counted once, as OpenAI does
    assert out.usage.completion_tokens == sum(grpc_text(fleet, "acme/a0", 8, temperature=1.0, seed=7 + j,
                                                        has_seed=True)[1] for j in range(2))
    again = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7, n=2)
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # a seed makes it reproducible
    two = client.completions.create(model="acme/a0", prompt=["ab:", "cd:"], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3] and two.usage.prompt_tokens == 6
    assert two.choices[0].text == two.choices[1].text == grpc_text(fleet, "acme/a0", 4, prompt="ab:")[0]


def test_n_choices_stream(client):
    chunks = list(client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=6, temperature=0, n=2,
                                            stream=True))
    texts = {0: "", 1: ""}
    for c in chunks:
        texts[c.choices[0].index] += c.choices[0].text
    whole = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=6, temperature=0)
    assert texts == {0: whole.choices[0].text, 1: whole.choices[0].text}


def test_a_token_id_prompt(fleet, client):
    out = client.completions.create(model="acme/a0", prompt=[5, 6, 7], max_tokens=4, temperature=0)
    request = worker_pb2.GenerateRequest(adapter="acme/a0", prompt_ids=[5, 6, 7], max_new_tokens=4)
    via_grpc = "".join(m.text for m in worker_pb2_grpc.WorkerStub(fleet.channel).Generate(request, timeout=60))
    assert out.choices[0].text == via_grpc and out.usage.prompt_tokens == 3


def test_stop_strings_end_the_text_before_them(client):
    full = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    assert len(full) >= 4, full
    stop = full[2:4]
    out = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert out.choices[0].text == full[:full.index(stop)] and out.choices[0].finish_reason == "stop"


def test_logprobs_of_a_completion(client):
    out = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        # greedy: the chosen token is the likeliest (alternatives are keyed by text: ids the character tokenizer
        # does not use all read "", and the likeliest of those is kept)
        assert top[token] == max(top.values()) == pytest.approx(logprob, abs=1e-5)
    assert lp.text_offset[0] == 0


def test_penalties_reach_the_worker(fleet, client):
    penalties = dict(presence_penalty=1.5, frequency_penalty=2.0)
    out = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=24, temperature=0, **penalties)
    assert out.choices[0].text == grpc_text(fleet, "acme/a0", 24, temperature=0.0, **penalties)[0]
    plain = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=24, temperature=0)
    assert out.choices[0].text != plain.choices[0].text  # the tiny model repeats itself; penalties stop that
    extensions = client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=24, temperature=0,
                                           extra_body={"repetition_penalty": 1.3, "top_k": 5})
    assert extensions.choices[0].text == grpc_text(fleet, "acme/a0", 24, temperature=0.0, repetition_penalty=1.3,
                                                   top_k=5)[0]


# --- chat ---------------------------------------------------------------------------------------------------------
def test_chat_uses_the_template_and_equals_grpc(fleet, client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model="acme/a0@prod", messages=messages, max_tokens=8, temperature=0)
    # the character tokenizer has no chat template: the gateway's plain one renders this
    rendered = "system: be brief\nuser: hi\nassistant:"
    text, tokens = grpc_text(fleet, "acme/a0@prod", 8, prompt=rendered, temperature=0.0)
    assert out.choices[0].message.content == text and out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(rendered) and out.usage.completion_tokens == tokens
    assert out.object == "chat.completion"


def test_a_streamed_chat_equals_the_whole_one(client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    whole = client.chat.completions.create(model="acme/a1", messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model="acme/a1", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_chat_with_n_and_logprobs(client):
    out = client.chat.completions.create(model="acme/a0", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=4, temperature=0, n=2, logprobs=True, top_logprobs=3)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].message.content == out.choices[1].message.content  # greedy
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens // 2
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-5)
               for t in content)


# --- models -------------------------------------------------------------------------------------------------------
def test_models_lists_the_base_adapters_and_aliases(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "base"
    assert {"acme/a0", "acme/a0@prod", "acme/a1"} <= set(ids)


# --- errors -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["acme/missing", "acme/a0@staging", "Not A Model!"])
def test_an_unknown_model_is_404(client, model):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=4)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_an_unknown_model_is_404_before_a_stream_starts(client):
    with pytest.raises(openai.NotFoundError):
        list(client.chat.completions.create(model="acme/missing", messages=[{"role": "user", "content": "hi"}],
                                            stream=True))


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": "x" * 257}, "stop"),  # each of the request's Generates would carry it
    ({"stop": ["ok", "x" * 257]}, "stop.1"),
    ({"n": 16, "prompt": ["p" * (1 << 20)] * 2}, "n"),  # 32 copies of 1 MiB: too much fan-out
    ({"extra_body": {"logit_bias": {"5": 1}}}, "logit_bias"),
    ({"extra_body": {"no_such_field": 1}}, "no_such_field"),
    ({"logprobs": 9}, "logprobs"),
])
def test_a_bad_parameter_is_400_naming_it(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**{"model": "acme/a0", "prompt": PROMPT, **kwargs})
    assert err.value.status_code == 400 and err.value.body["param"] == param, err.value.body
    assert err.value.body["type"] == "invalid_request_error"


def test_a_bad_chat_message_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="acme/a0", messages=[{"role": "tool", "content": "x",
                                                                   "tool_call_id": "1"}])
    assert err.value.body["param"].startswith("messages.0")


def test_the_worker_s_own_validation_is_400(client):
    with pytest.raises(openai.BadRequestError):  # more tokens than the tiny model has positions
        client.completions.create(model="acme/a0", prompt=PROMPT, max_tokens=100_000)


def test_errors_have_openai_s_shape_on_the_wire(fleet):
    r = httpx.post(f"{fleet.url}/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{fleet.url}/nowhere", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{fleet.url}/completions", json={"model": "acme/a0", "prompt": "x", "max_tokens": 1},
                   headers={"x-request-id": "abc123"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc123"
    r = httpx.post(f"{fleet.url}/completions", content=b" " * (17 << 20), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "body_too_large"


def test_no_worker_is_503(redis_server, s3_server, tmp_path, fleet):
    """A router whose store has no workers: a canonical key needs no lookup, and placement finds nobody."""
    address, _, stop_store = start_store(store_config(redis_server, s3_server, tmp_path))
    _, url, _, stop_router = start_router(RouterConfig(store=address, poll_s=0.1, http_port=0))
    try:
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30) as c:
            with pytest.raises(openai.InternalServerError) as err:
                c.completions.create(model=fleet.keys[0], prompt=PROMPT, max_tokens=2)
            assert err.value.status_code == 503
            with pytest.raises(openai.BadRequestError) as chat:  # started without --tokenizer
                c.chat.completions.create(model=fleet.keys[0], messages=[{"role": "user", "content": "x"}])
            assert chat.value.body["code"] == "chat_template_missing"
    finally:
        stop_router()
        stop_store()


def test_router_serve_http_port_from_the_command_line(fleet):
    """`adapterfleet router serve --http-port 0 --tokenizer DIR`: the ready line names the HTTP URL, which serves."""
    router = subprocess.Popen([sys.executable, "-m", "adapterfleet.cli.main", "router", "serve", "--port", "0",
                               "--insecure", "--store", fleet.store, "--http-port", "0", "--tokenizer",
                               str(fleet.root / "base"), "--log-level", "WARNING"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = router.stdout.readline()
        assert "router listening on 127.0.0.1:" in line and "OpenAI-compatible HTTP on http://" in line, \
            router.stderr.read()
        url = line.rsplit(" ", 1)[1].strip()
        deadline = time.monotonic() + 10
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60) as c:
            while "base" not in [m.id for m in c.models.list()]:  # the router sees the worker after a poll
                assert time.monotonic() < deadline
                time.sleep(0.1)
            out = c.chat.completions.create(model="acme/a0@prod", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, temperature=0)
        assert out.choices[0].message.content == grpc_text(fleet, "acme/a0@prod", 4, prompt="user: hi\nassistant:",
                                                           temperature=0.0)[0]
    finally:
        router.send_signal(signal.SIGTERM)
        assert router.wait(30) == 0


@pytest.mark.parametrize(("err", "status"), [
    (errors.InvalidArgument("x"), 400), (errors.Incompatible("x"), 400), (errors.PermissionDenied("x"), 403),
    (errors.NotFound("x"), 404), (errors.ResourceExhausted("x"), 429), (errors.Unavailable("x"), 503),
    (errors.DeadlineExceeded("x"), 504), (errors.ChecksumMismatch("x"), 500), (RuntimeError("secret"), 500),
])
def test_the_one_error_table(err, status):
    got, body = error_body(err)
    assert got == status and set(body["error"]) == {"message", "type", "param", "code"}
    assert "secret" not in body["error"]["message"]
