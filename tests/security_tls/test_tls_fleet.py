"""A whole fleet over mTLS (in-process store, worker and router on port 0, a tiny Llama): the SDK and the CLI get
answers through it, every hop refuses strangers, and a certificate rotation leaves open streams and channels alone
while new connections get the new certificate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from adapterfleet import AdapterStore, FleetClient, Unavailable
from adapterfleet.cli.auth_cmd import issue_cert
from adapterfleet.router.config import RouterConfig
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import WorkerHandle, start_router, start_store
from tests.security_tls.tls_helpers import client, make_material, peer_serial, serial_of, server_tls

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tlsfleet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapter = make_peft_adapter(base, root / "a", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    return base, adapter


@pytest.fixture
def fleet(store_config, tiny, tmp_path):
    base, adapter = tiny
    m = make_material(tmp_path / "sec")
    tls, sec = server_tls(m), client(m)
    store, _, stop_store = start_store(replace(store_config, tls=tls))
    worker = WorkerHandle(WorkerConfig(base_model=str(base), store=store, max_slots=2, disk_dir=str(tmp_path / "w"),
                                       announce_every_s=0.2, announce_ttl_s=2.0, tls=tls, security=sec))
    router, core, stop_router = start_router(RouterConfig(store=store, poll_s=0.1, tls=tls, security=sec))
    deadline = time.monotonic() + 20
    while len(core.membership.views()) < 1:  # the worker announced over mTLS and the router read it over mTLS
        assert time.monotonic() < deadline, "the router never saw the worker"
        time.sleep(0.05)
    with AdapterStore(store, tls_ca=m.ca, tls_cert=m.cert, tls_key=m.key) as s:
        key = str(s.push(adapter, "acme/a").manifest.key)
    yield m, store, worker, router, key
    stop_router()
    worker.stop()
    stop_store()


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_sdk_and_cli_through_an_mtls_fleet(fleet):
    m, store, worker, router, key = fleet
    with FleetClient(router, timeout=60, tls_ca=m.ca, tls_cert=m.cert, tls_key=m.key) as fleet_client:
        out = fleet_client.generate([1, 2, 3], adapter="acme/a", max_new_tokens=4)
        assert out.adapter_key == key and len(out.token_ids) == 4
    for address in (router, worker.address, store):  # no hop answers a client without a certificate
        with FleetClient(address, timeout=5, tls_ca=m.ca) as stranger, pytest.raises(Unavailable):
            stranger.generate([1, 2, 3], max_new_tokens=1)
        with FleetClient(address, timeout=5) as plain, pytest.raises(Unavailable):
            plain.generate([1, 2, 3], max_new_tokens=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERFLEET_")} | {
        "PYTHONPATH": f"{REPO}:{REPO / 'protos'}", "ADAPTERFLEET_TLS_CA": str(m.ca),
        "ADAPTERFLEET_TLS_CERT": str(m.cert), "ADAPTERFLEET_TLS_KEY": str(m.key)}
    cli = [sys.executable, "-m", "adapterfleet.cli.main"]
    out = subprocess.run([*cli, "generate", "--router", router, "--adapter", "acme/a", "--prompt-ids", "1,2,3",
                          "--max-new-tokens", "3", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["adapter_key"] == key
    out = subprocess.run([*cli, "worker", "resident", "--worker", worker.address, "--json"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0 and key in out.stdout, out.stderr


def test_rotation_keeps_open_streams_and_channels_and_new_connections_see_the_new_certificate(fleet):
    m, store, worker, router, key = fleet
    old = serial_of(m.cert)
    with FleetClient(router, timeout=60, tls_ca=m.ca, tls_cert=m.cert, tls_key=m.key) as fleet_client:
        stream = fleet_client.stream([1, 2, 3], adapter="acme/a", max_new_tokens=48)
        first = next(stream)
        assert peer_serial(_port(router), m) == old
        new = issue_cert(m)
        assert new != old
        rest = list(stream)  # the stream opened before the rotation finishes
        assert rest and rest[-1].finish_reason == "length"
        assert len(first.token_ids) + sum(len(c.token_ids) for c in rest) == 48
        again = fleet_client.generate([4, 5], adapter="acme/a", max_new_tokens=2)  # the open channel still works
        assert again.adapter_key == key
    for address in (router, worker.address, store):
        assert peer_serial(_port(address), m) == new, address
    with FleetClient(router, timeout=60, tls_ca=m.ca, tls_cert=m.cert, tls_key=m.key) as fresh:  # new cert files
        assert fresh.generate([1, 2], adapter="acme/a", max_new_tokens=2).adapter_key == key
