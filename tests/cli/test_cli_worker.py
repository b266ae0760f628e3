"""`adapterfleet worker serve`, `generate` and `score` as processes, the way scripts call them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest

from adapterfleet.common.embedded_redis import free_port
from tests.cli.test_cli import CLI, REPO, StoreProcess, run_cli
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.tokenizer import save_char_tokenizer


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("cliw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        save_char_tokenizer(base)
        adapter = make_peft_adapter(base, root / "adapter", seed=5, r=4, target_modules=["q_proj", "v_proj"])
    store = StoreProcess("--data-dir", str(root / "store"), cwd=root)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}", "ADAPTERFLEET_STORE": store.address}
    worker = subprocess.Popen([*CLI, "worker", "serve", "--insecure", "--port", str(port), "--base-model", str(base),
                               "--disk-cache-dir", str(root / "wcache"), "--log-level", "WARNING"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    line = worker.stdout.readline()
    assert "worker listening" in line and "fingerprint=sha256:" in line, worker.stderr.read()
    rport = free_port()
    router = subprocess.Popen([*CLI, "router", "serve", "--insecure", "--port", str(rport), "--log-level", "WARNING"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    assert "router listening" in router.stdout.readline(), router.stderr.read()
    yield store, f"127.0.0.1:{port}", adapter, f"127.0.0.1:{rport}"
    for proc in (router, worker):
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    store.stop()


def cli(*args):
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_generate_and_score_json_contract(fleet):
    store, worker, adapter, _ = fleet
    run_cli("push", str(adapter), "--name", "acme/tiny", "--alias", "prod", store=store.address)
    base = json.loads(cli("generate", "--worker", worker, "--prompt-ids", "5,6,7", "--max-new-tokens", "4",
                          "--json"))
    tuned = json.loads(cli("generate", "--worker", worker, "--adapter", "acme/tiny@prod", "--prompt-ids", "5,6,7",
                           "--max-new-tokens", "4", "--json"))
    assert 1 <= len(base["token_ids"]) <= 4 and 1 <= len(tuned["token_ids"]) <= 4
    assert tuned["adapter_key"].startswith("acme/tiny@sha256:")
    scored = json.loads(cli("score", "--worker", worker, "--adapter", "acme/tiny", "--prompt-ids", "1,2,3,4",
                            "--json"))
    assert len(scored["logprobs"]) == 3 and all(x <= 0 for x in scored["logprobs"])


def test_text_in_text_out_with_the_model_tokenizer(fleet):
    _, worker, _, _ = fleet
    out = json.loads(cli("generate", "--worker", worker, "--prompt", "hello", "--max-new-tokens", "5", "--json",
                         "--stop-ids", "0"))
    assert isinstance(out["text"], str) and len(out["token_ids"]) == 5


def test_errors_exit_non_zero_with_the_message(fleet):
    _, worker, _, _ = fleet
    out = subprocess.run([*CLI, "score", "--worker", worker, "--adapter", "acme/none", "--prompt-ids", "1,2"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = subprocess.run([sys.executable, "-m", "adapterfleet.cli.main", "generate", "--worker", worker,
                          "--prompt-ids", "x"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 1 and "comma-separated" in out.stderr


def test_generate_through_the_router_matches_the_worker(fleet):
    store, worker, adapter, router = fleet
    run_cli("push", str(adapter), "--name", "acme/routed", store=store.address)
    args = ("--adapter", "acme/routed", "--prompt-ids", "9,8,7", "--max-new-tokens", "5", "--stop-ids", "0", "--json")
    direct = json.loads(cli("generate", "--worker", worker, *args))
    routed = json.loads(cli("generate", "--router", router, *args))
    assert routed["token_ids"] == direct["token_ids"] and routed["adapter_key"] == direct["adapter_key"]


def run(*args, env=None, timeout=120):
    """The CLI with only the given ADAPTERFLEET_* variables (none of the caller's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERFLEET_")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**clean, **(env or {})})


def test_worker_admin_commands_load_pin_list_unload_and_stats(fleet):
    store, worker, adapter, _ = fleet
    run_cli("push", str(adapter), "--name", "acme/admin", "--alias", "prod", store=store.address)
    env = {"ADAPTERFLEET_WORKER": worker}  # the address from the environment, like every option
    loaded = run("worker", "load", "acme/admin@prod", "--pin", "--json", env=env)
    assert loaded.returncode == 0, loaded.stderr
    state = json.loads(loaded.stdout)
    assert state["key"].startswith("acme/admin@sha256:") and (state["tier"], state["pinned"]) == ("active", True)
    resident = json.loads(run("worker", "resident", "--json", env=env).stdout)
    assert state["key"] in {a["key"] for a in resident["adapters"]}
    text = run("worker", "resident", env=env).stdout
    assert any(line.startswith(state["key"]) and " active " in line for line in text.splitlines()), text
    unpinned = json.loads(run("worker", "pin", "acme/admin", "--unpin", "--json", env=env).stdout)
    assert unpinned["pinned"] is False and unpinned["key"] == state["key"]
    stats = json.loads(run("worker", "stats", "--worker", worker, "--json").stdout)
    assert stats["fingerprint"].startswith("sha256:") and state["key"] in {a["key"] for a in stats["adapters"]}
    assert "base model" in run("worker", "stats", env=env).stdout
    assert json.loads(run("worker", "unload", state["key"], "--json", env=env).stdout) == {
        "ref": state["key"], "unloaded": True}
    out = run("worker", "unload", state["key"], env=env)
    assert (out.returncode, out.stdout) == (0, f"{state['key']} was not held by {worker}\n")


def test_router_stats_and_generate_take_the_router_from_the_environment(fleet):
    _, worker, _, router = fleet
    env = {"ADAPTERFLEET_ROUTER": router}
    out = run("generate", "--prompt-ids", "5,6,7", "--max-new-tokens", "2", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert 1 <= len(json.loads(out.stdout)["token_ids"]) <= 2
    stats = json.loads(run("router", "stats", "--json", env=env).stdout)
    assert stats["requests"] >= 1 and [w["address"] for w in stats["workers"]] == [worker]
    assert "affinity hit rate" in run("router", "stats", env=env).stdout
    # a flag wins over the environment, also across --worker | --router
    out = run("generate", "--worker", worker, "--prompt-ids", "5,6", "--max-new-tokens", "1", "--json",
              env={"ADAPTERFLEET_ROUTER": "127.0.0.1:1"})
    assert out.returncode == 0, out.stderr
    out = run("generate", "--prompt-ids", "5", env={"ADAPTERFLEET_ROUTER": router, "ADAPTERFLEET_WORKER": worker})
    assert out.returncode == 2 and "ADAPTERFLEET_WORKER and ADAPTERFLEET_ROUTER are both set" in out.stderr


def test_errors_in_json_name_the_code_on_stderr(fleet):
    _, worker, _, _ = fleet
    out = run("score", "--worker", worker, "--adapter", "acme/none", "--prompt-ids", "1,2", "--json")
    assert out.returncode == 1 and out.stdout == ""
    error = json.loads(out.stderr)["error"]
    assert error["code"] == "NOT_FOUND" and "does not exist" in error["message"]
    out = run("worker", "load", "acme/none", "--worker", worker, "--json")
    assert out.returncode == 1 and json.loads(out.stderr)["error"]["code"] == "NOT_FOUND"
    out = run("worker", "stats", "--json")  # no --worker, no ADAPTERFLEET_WORKER
    assert out.returncode == 2
    assert json.loads(out.stderr) == {"error": {"code": "INVALID_ARGUMENT",
                                                "message": "the following arguments are required: --worker"}}
    out = run("router", "stats", "--router", worker)  # a worker is not a router
    assert out.returncode == 1 and f"{worker} does not implement this call: it needs a router" in out.stderr


@pytest.mark.parametrize("argv, role", [
    (["worker", "stats", "--worker", "{addr}"], "worker"),
    (["router", "stats", "--router", "{addr}"], "router"),
    (["generate", "--router", "{addr}", "--prompt-ids", "1"], "router"),
    (["ls", "--store", "{addr}"], "store"),
])
def test_nothing_listening_is_one_clear_line(argv, role):
    addr = f"127.0.0.1:{free_port()}"  # held free: nothing listens there
    out = run(*[a.format(addr=addr) for a in argv])
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"error: no {role} at {addr}: nothing is listening there (connection refused). Start one "
                          f"(`adapterfleet {role} serve`, or `adapterfleet up` for a local fleet), or point --{role} "
                          f"or ADAPTERFLEET_{role.upper()} at the one that runs\n")
    out = run(*[a.format(addr=addr) for a in argv], "--json")
    assert json.loads(out.stderr)["error"]["code"] == "UNAVAILABLE"
