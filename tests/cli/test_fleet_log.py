"""A fleet part that fails to start is reported by its root cause, not by the interpreter's follow-on noise."""

from __future__ import annotations

import os
import socket
import subprocess

from adapterfleet.cli.fleet_log import explain, read_since, root_causes
from tests.cli.test_cli import CLI, REPO


def test_a_router_on_a_taken_port_is_explained_by_the_bind_failure(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([*CLI, "router", "serve", "--insecure", "--port", str(port), "--store", "127.0.0.1:1"],
                             capture_output=True, text=True, cwd=REPO, timeout=120,
                             env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"})
    assert out.returncode != 0
    causes = root_causes(out.stderr)
    assert any(f"Failed to bind to address 127.0.0.1:{port}" in c for c in causes), causes
    assert any("Address already in use" in c for c in causes), causes
    assert "Event loop is closed" not in explain(out.stderr)


def test_a_taken_metrics_port_is_explained_by_it_not_by_the_closed_event_loop(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([*CLI, "router", "serve", "--insecure", "--port", "0", "--store", "127.0.0.1:1",
                              "--metrics-port", str(port), "--metrics-host", "127.0.0.1"], capture_output=True,
                             text=True, cwd=REPO, timeout=120,
                             env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"})
    assert out.returncode != 0
    assert "Address already in use" in explain(out.stderr) and "Event loop is closed" not in explain(out.stderr)


FOLLOW_ON = """\
Traceback (most recent call last):
  File "/x/metrics.py", line 75, in serve
    self.socket.bind(self.server_address)
OSError: [Errno 98] Address already in use
Exception ignored in: <function Server.__del__ at 0x7f1aa81dc360>
Traceback (most recent call last):
  File "/x/grpc/aio/_server.py", line 219, in __del__
RuntimeError: Event loop is closed
sys:1: RuntimeWarning: coroutine 'AioServer.shutdown' was never awaited
"""


def test_the_root_cause_comes_first_and_follow_ons_are_dropped():
    assert root_causes(FOLLOW_ON) == ["OSError: [Errno 98] Address already in use"]
    assert root_causes('{"level": "INFO"}\nerror: --base-model /m is not a directory\n') == [
        "error: --base-model /m is not a directory"]
    assert root_causes("just a line\n") == []
    assert explain("a\nb\n") == "  a\n  b"  # no cause found: the last lines


def test_only_this_runs_lines_are_read(tmp_path):
    log = tmp_path / "router.log"
    log.write_text("error: from an earlier run\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("error: from this run\n")
    assert root_causes(read_since(log, start)) == ["error: from this run"]
