"""The `adapterfleet` CLI contract, against real store processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from adapterfleet.common.embedded_redis import free_port
from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.store.client import StoreClient
from tests.helpers.synthetic import big_adapter, write_adapter

CLI = [sys.executable, "-m", "adapterfleet.cli.main"]
REPO = Path(__file__).resolve().parents[2]


class StoreProcess:
    def __init__(self, *flags: str, cwd: Path):
        self.port = free_port()
        self.proc = subprocess.Popen([*CLI, "store", "serve", "--insecure", "--port", str(self.port), *flags], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}",
                                          "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"store did not start: {line}{self.proc.stderr.read()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)


def run_cli(*args: str, store: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([*CLI, *args, "--store", store], capture_output=True, text=True, cwd=REPO, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr)
    return out


@pytest.fixture
def store_proc(redis_server, s3_server, tmp_path):
    proc = StoreProcess("--redis-url", redis_server.url, "--redis-prefix", f"c{uuid.uuid4().hex[:8]}:",
                        "--s3-endpoint", s3_server, "--bucket", f"cli-{uuid.uuid4().hex[:8]}", cwd=tmp_path)
    yield proc
    proc.stop()


def test_push_resolve_alias_ls_pull_json_contract(store_proc, tmp_path):
    addr = store_proc.address
    src = write_adapter(tmp_path / "a")
    pushed = json.loads(run_cli("push", str(src), "--name", "acme/sum", "--alias", "prod", "--json", store=addr).stdout)
    assert pushed["name"] == "acme/sum" and pushed["version"] == 1 and pushed["digest"].startswith("sha256:")
    resolved = json.loads(run_cli("resolve", "acme/sum@prod", "--json", store=addr).stdout)
    fields = ("name", "version", "digest")
    assert {k: resolved[k] for k in fields} == {k: pushed[k] for k in fields}
    run_cli("push", str(write_adapter(tmp_path / "b", seed=9)), "--name", "acme/sum", store=addr)
    run_cli("alias", "set", "acme/sum", "prod", "1:90,2:10", "--expect", "1", store=addr)
    bad = run_cli("alias", "set", "acme/sum", "prod", "2", "--expect", "1", store=addr, check=False)
    assert bad.returncode != 0 and "1:90,2:10" in bad.stderr
    listing = json.loads(run_cli("ls", "acme/sum", "--json", store=addr).stdout)
    assert [v["version"] for v in listing["versions"]] == [1, 2]
    assert listing["aliases"]["prod"] == [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]
    every = json.loads(run_cli("ls", "--json", store=addr).stdout)
    assert every == {"adapters": [{"name": "acme/sum", "latest_version": 2, "version_count": 2,
                                   "aliases": {"prod": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}}]}
    assert run_cli("ls", store=addr).stdout.split("\t") == ["acme/sum", "latest 2", "2 versions", "prod->1:90,2:10\n"]
    gc = json.loads(run_cli("gc", "--dry-run", "--min-age", "0", "--json", store=addr).stdout)
    assert gc == {"deleted": [], "bytes_freed": 0, "kept_referenced": 4, "kept_leased": 0, "aborted_uploads": 0,
                  "dry_run": True}  # v1's three blobs and v2's new weights
    run_cli("pull", "acme/sum@1", str(tmp_path / "out"), store=addr)
    assert all((tmp_path / "out" / f.name).read_bytes() == f.read_bytes() for f in src.iterdir())


def test_errors_exit_non_zero_with_the_server_message(store_proc, tmp_path):
    src = write_adapter(tmp_path / "a")
    (src / "adapter_model.safetensors").rename(src / "adapter_model.bin")
    out = run_cli("push", str(src), "--name", "x", store=store_proc.address, check=False)
    assert out.returncode == 1 and "pickle" in out.stderr and "safetensors" in out.stderr
    out = run_cli("resolve", "missing@prod", store=store_proc.address, check=False)
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_store_killed_mid_push_leaves_no_version_and_next_push_succeeds(redis_server, s3_server, tmp_path):
    prefix, bucket = f"k{uuid.uuid4().hex[:8]}:", f"kill-{uuid.uuid4().hex[:8]}"
    flags = ("--redis-url", redis_server.url, "--redis-prefix", prefix, "--s3-endpoint", s3_server, "--bucket", bucket,
             "--s3-part-mb", "5", "--s3-single-put-mb", "0")  # multipart: its killed upload is GC's to abort
    src = big_adapter(tmp_path / "big", megabytes=24)
    store = StoreProcess(*flags, cwd=tmp_path)
    sent = [0]

    def kill_midway(n: int) -> None:
        sent[0] += n
        if sent[0] > 16 << 20 and store.proc.poll() is None:
            store.proc.kill()  # SIGKILL: no cleanup of any kind
            store.proc.wait()

    with pytest.raises(AdapterFleetError) as err:
        StoreClient(store.address).push_dir(src, "big", progress=kill_midway)
    assert err.value.code == "UNAVAILABLE"

    restarted = StoreProcess(*flags, cwd=tmp_path)
    try:
        client = StoreClient(restarted.address)
        with pytest.raises(AdapterFleetError) as err:
            client.resolve("big")
        assert err.value.code == "NOT_FOUND"
        out = client.push_dir(src, "big")
        assert out.created and out.manifest.version == 1
        gc = client.collect_garbage(min_age=0)
        assert gc.deleted == [] and gc.aborted_uploads >= 1  # the killed multipart upload
        _, files = client.fetch("big@1")
        assert files["adapter_model.safetensors"] == (src / "adapter_model.safetensors").read_bytes()
    finally:
        restarted.stop()


def test_embedded_default_needs_no_external_service_and_persists(tmp_path):
    store = StoreProcess("--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    try:
        pushed = json.loads(run_cli("push", str(write_adapter(tmp_path / "a")), "--name", "local", "--json",
                                    store=store.address).stdout)
    finally:
        store.stop()
    again = StoreProcess("--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    try:
        resolved = json.loads(run_cli("resolve", "local", "--json", store=again.address).stdout)
        assert resolved["digest"] == pushed["digest"]
    finally:
        again.stop()


def test_cli_commands_do_not_import_torch():
    code = ("import sys; from adapterfleet.cli import main, commands; "
            "import adapterfleet.store.client, adapterfleet.store.server; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_served_process_logs_json_serves_metrics_and_drains_on_sigterm(redis_server, tmp_path):
    import urllib.request

    metrics_port = free_port()
    proc = StoreProcess("--redis-url", redis_server.url, "--redis-prefix", f"m{uuid.uuid4().hex[:8]}:",
                        "--data-dir", str(tmp_path / "store"), "--metrics-port", str(metrics_port),
                        "--metrics-host", "127.0.0.1", cwd=tmp_path)
    try:
        run_cli("push", str(write_adapter(tmp_path / "a")), "--name", "acme/m", store=proc.address)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'adapterfleet_store_pushes_total{outcome="created"} 1.0' in text
        assert 'adapterfleet_requests_total{adapter="",code="OK",method="Push",service="store"} 1.0' in text
    finally:
        proc.stop()
    assert proc.proc.returncode == 0
    lines = [json.loads(line) for line in proc.proc.stderr.read().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines if line["service"] == "store"]
    assert any("metrics on :" in m for m in messages) and any(m.startswith("draining") for m in messages)


def test_alias_and_yank_print_json(store_proc, tmp_path):
    addr = store_proc.address
    run_cli("push", str(write_adapter(tmp_path / "a")), "--name", "acme/j", store=addr)
    run_cli("push", str(write_adapter(tmp_path / "b", seed=3)), "--name", "acme/j", store=addr)
    out = json.loads(run_cli("alias", "set", "acme/j", "prod", "1:90,2:10", "--expect", "none", "--json",
                             store=addr).stdout)
    assert out == {"name": "acme/j", "alias": "prod",
                   "targets": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}
    out = json.loads(run_cli("alias", "delete", "acme/j", "prod", "--json", store=addr).stdout)
    assert out == {"name": "acme/j", "alias": "prod", "deleted": True}
    yanked = json.loads(run_cli("yank", "acme/j", "2", "--json", store=addr).stdout)
    assert (yanked["name"], yanked["version"], yanked["yanked"]) == ("acme/j", 2, True)
    bad = run_cli("alias", "set", "acme/j", "prod", "2", "--expect", "1", "--json", store=addr, check=False)
    assert bad.returncode == 1 and json.loads(bad.stderr)["error"]["code"] == "FAILED_PRECONDITION"


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone: the first write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("argv", [["ls", "--json"], ["ls"], ["watch", "--cursor", "0"], ["resolve", "acme/p"]])
def test_a_closed_pipe_ends_every_command_quietly(store_proc, tmp_path, argv):
    run_cli("push", str(write_adapter(tmp_path / "a")), "--name", "acme/p", store=store_proc.address)
    write = _closed_pipe()
    try:
        out = subprocess.run([*CLI, *argv, "--store", store_proc.address], stdout=write, stderr=subprocess.PIPE,
                             text=True, cwd=REPO, timeout=60)
    finally:
        os.close(write)
    assert (out.returncode, out.stderr) == (141, "")


def test_watch_into_head_ends_quietly_at_the_next_event(store_proc, tmp_path):
    addr = store_proc.address
    run_cli("push", str(write_adapter(tmp_path / "a")), "--name", "acme/w", store=addr)
    cli = " ".join([*CLI, "watch", "--cursor", "0", "--store", addr])
    pipeline = subprocess.Popen(["bash", "-c", f"{cli} | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = pipeline.stdout.readline()
    assert json.loads(first)["name"] == "acme/w"
    run_cli("push", str(write_adapter(tmp_path / "b", seed=4)), "--name", "acme/w", store=addr)  # watch writes again
    rest, stderr = pipeline.communicate(timeout=30)
    assert rest == "" and stderr == "status 141\n"


def test_usage_errors_with_json_are_json():
    out = subprocess.run([*CLI, "ls", "--json", "--no-such-flag"], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert json.loads(out.stderr) == {"error": {"code": "INVALID_ARGUMENT",
                                                "message": "unrecognized arguments: --no-such-flag"}}
