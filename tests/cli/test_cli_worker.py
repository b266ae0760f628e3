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
    worker = subprocess.Popen([*CLI, "worker", "serve", "--port", str(port), "--base-model", str(base),
                               "--disk-cache-dir", str(root / "wcache"), "--log-level", "WARNING"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    line = worker.stdout.readline()
    assert "worker listening" in line and "fingerprint=sha256:" in line, worker.stderr.read()
    rport = free_port()
    router = subprocess.Popen([*CLI, "router", "serve", "--port", str(rport), "--log-level", "WARNING"],
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
