"""`adapterfleet up` starts a working fleet and Ctrl-C stops all of it; its ports are checked (or chosen) first."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

from adapterfleet.common.embedded_redis import free_port
from adapterfleet.common.ports import reserve
from tests.cli.test_cli import CLI, REPO

ENV = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"}


def test_up_answers_through_the_router_and_stops_cleanly(tmp_path):
    up = subprocess.Popen([*CLI, "up", "--workers", "2", "--port", "0", "--data-dir", str(tmp_path), "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        line = up.stdout.readline()
        assert line, up.stderr.read()
        fleet = json.loads(line)  # --port 0: every port chosen free
        assert set(fleet["metrics"]) == {"store", "router", "worker-0", "worker-1"} and len(fleet["workers"]) == 2
        generate = [*CLI, "generate", "--router", fleet["router"], "--prompt", "hello", "--json",
                    "--max-new-tokens", "4"]
        plain = subprocess.run(generate, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
        assert plain.returncode == 1 and "TLS" in plain.stderr, plain.stderr  # mTLS is on by default
        sec = fleet["security"]  # made on the first run in the data directory
        env = {**ENV, "ADAPTERFLEET_TLS_CA": sec["ca"], "ADAPTERFLEET_TLS_CERT": sec["cert"],
               "ADAPTERFLEET_TLS_KEY": sec["key"],
               "ADAPTERFLEET_TOKEN": Path(sec["admin_token_file"]).read_text().strip()}
        out = subprocess.run(generate, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["token_ids"]) >= 1
        # every part serves Prometheus metrics on the port the fleet printed
        metrics = fleet["metrics"]
        router = urllib.request.urlopen(f"http://127.0.0.1:{metrics['router']}/metrics", timeout=5).read().decode()
        assert 'adapterfleet_requests_total{adapter="_base",code="OK",method="Generate",service="router"}' in router
        for part in ("store", "worker-0", "worker-1"):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics[part]}/metrics", timeout=5).read().decode()
            assert "adapterfleet_request_seconds" in text
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            code = "still running 60 s after SIGINT (killed)"
        assert code == 0, f"up: {code}; its stderr:\n{up.stderr.read()[-4000:]}"
    ports = [fleet["store"], *fleet["workers"], fleet["router"]]
    leftover = subprocess.run(["pgrep", "-f", "--", "|".join(f"--port {p.rsplit(':', 1)[1]}( |$)" for p in ports)],
                              capture_output=True, text=True)
    assert leftover.returncode == 1, leftover.stdout  # 1: no process matched (2 would be a pgrep usage error)


def fleet_base_port() -> int:
    """A base port whose fleet ports are all free now (and held a minute: see adapterfleet.common.ports)."""
    for _ in range(50):
        port = free_port()
        try:
            for offset in (10, 11, 20, 21):
                reserve(port + offset)
        except OSError:
            continue
        return port
    raise RuntimeError("no free span of ports")


def test_a_fixed_port_in_use_stops_up_before_anything_starts(tmp_path):
    port = fleet_base_port()
    with socket.socket() as taken:  # worker-1's port: PORT+11
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port + 11))
        taken.listen()
        out = subprocess.run([*CLI, "up", "--workers", "2", "--port", str(port), "--data-dir", str(tmp_path),
                              "--base-model", str(tmp_path / "no-model-needed")], capture_output=True, text=True,
                             env=ENV, cwd=REPO, timeout=60)
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith(f"error: port {port + 11} (worker-1's gRPC port) is in use on 127.0.0.1"), out.stderr
    assert "--port 0 chooses free ports" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.glob("*.log"))  # nothing was started


def test_a_part_that_fails_to_start_is_reported_by_its_root_cause(tmp_path):
    (tmp_path / "bad-model").mkdir()
    (tmp_path / "bad-model" / "config.json").write_text("{}")
    out = subprocess.run([*CLI, "up", "--workers", "1", "--port", "0", "--data-dir", str(tmp_path / "data"),
                          "--base-model", str(tmp_path / "bad-model")], capture_output=True, text=True, env=ENV,
                         cwd=REPO, timeout=240)
    assert out.returncode == 1, out.stdout
    first, *rest = out.stderr.splitlines()
    log = tmp_path / "data" / "worker-0.log"
    assert first == f"error: the fleet's worker-0 exited (status 1) before it was ready; see {log}:"
    assert rest and rest[0].startswith("  ValueError: Unrecognized model in"), out.stderr
    assert "Traceback" not in out.stderr
