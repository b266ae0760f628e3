"""`adapterfleet up` starts a working fleet and Ctrl-C stops all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

from adapterfleet.common.embedded_redis import free_port
from tests.cli.test_cli import CLI, REPO


def test_up_answers_through_the_router_and_stops_cleanly(tmp_path):
    port = free_port()
    while port <= 6379 < port + 50 or port > 65535 - 50:  # the fleet takes PORT..PORT+49; not the machine's Redis
        port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"}
    up = subprocess.Popen([*CLI, "up", "--workers", "2", "--port", str(port), "--data-dir", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        lines = {}
        while "metrics" not in lines:
            line = up.stdout.readline()
            assert line, up.stderr.read()
            key, _, value = line.partition(" ")
            lines[key] = value.strip()
        out = subprocess.run([*CLI, "generate", "--router", lines["router"], "--prompt", "hello", "--json",
                              "--max-new-tokens", "4"], capture_output=True, text=True, env=env, cwd=REPO,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["token_ids"]) >= 1
        # every part serves Prometheus metrics on the port the fleet printed
        metrics = lines["metrics"]
        assert f"router {port + 31}" in metrics and f"workers {port + 40}-{port + 41}" in metrics
        router = urllib.request.urlopen(f"http://127.0.0.1:{port + 31}/metrics", timeout=5).read().decode()
        assert 'adapterfleet_requests_total{adapter="_base",code="OK",method="Generate",service="router"}' in router
        for metrics_port in (port + 30, port + 40, port + 41):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert "adapterfleet_request_seconds" in text
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    leftover = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True)
    assert leftover.returncode == 1, leftover.stdout  # 1: no process matched (2 would be a pgrep usage error)
