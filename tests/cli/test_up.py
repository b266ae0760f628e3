"""`adapterfleet up` starts a working fleet and Ctrl-C stops all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from services.common.embedded_redis import free_port
from tests.cli.test_cli import CLI, REPO


def test_up_answers_through_the_router_and_stops_cleanly(tmp_path):
    port = free_port()
    while port <= 6379 < port + 25:  # the fleet takes PORT..PORT+20; never near the machine's own Redis
        port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"}
    up = subprocess.Popen([*CLI, "up", "--workers", "2", "--port", str(port), "--data-dir", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        lines = {}
        while "router" not in lines:
            line = up.stdout.readline()
            assert line, up.stderr.read()
            key, _, value = line.partition(" ")
            lines[key] = value.strip()
        out = subprocess.run([*CLI, "generate", "--router", lines["router"], "--prompt", "hello", "--json",
                              "--max-new-tokens", "4"], capture_output=True, text=True, env=env, cwd=REPO,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["token_ids"]) >= 1
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    leftover = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True)
    assert leftover.returncode == 1, leftover.stdout  # 1: no process matched (2 would be a pgrep usage error)
