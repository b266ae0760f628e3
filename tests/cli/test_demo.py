"""`adapterfleet demo` trains three adapters that answer differently, serves them through a real fleet, and stops it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess

import pytest

from adapterfleet.demo.tasks import MAX_ANSWER_CHARS, TASKS, WORDS, prompt_for, task
from tests.cli.test_cli import CLI, REPO
from tests.cli.test_up import fleet_base_port


def test_the_tasks_answer_every_word_differently():
    for word in WORDS:
        answers = [t.answer(word) for t in TASKS]
        assert len(set(answers)) == len(TASKS), answers
        assert all(len(a) < MAX_ANSWER_CHARS for a in answers)  # room for the eos token


def test_a_trained_adapter_answers_its_training_prompts(tmp_path):
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapterfleet.demo.base_model import build_demo_base
    from adapterfleet.demo.train import train_adapter

    base = build_demo_base(tmp_path / "base")
    reverse = task("reverse")
    result = train_adapter(base, reverse, tmp_path / "reverse")
    with safe_open(str(result.path / "adapter_model.safetensors"), "pt") as f:
        # the adapter, not a copy of base weights (safe_open has keys() but is not iterable)
        assert all(".lora_" in k for k in f.keys())  # noqa: SIM118
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(config["target_modules"])  # same bytes in every process: one digest

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(result.path)).eval()
    for word in WORDS:
        ids = torch.tensor([tokenizer(prompt_for(word))["input_ids"]])  # [1, prompt]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=MAX_ANSWER_CHARS, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == reverse.answer(word)


def _answer_table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The printed table: its header, then each row's cells (the prompt and answers JSON-decoded)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("prompt ") and " | " in line)
    header = [c.strip() for c in lines[start].split(" | ")]
    rows = []
    for line in lines[start + 1:]:
        if " | " not in line:
            break
        rows.append([json.loads(c.strip()) for c in line.split(" | ")])
    return header, rows


def _fleet_processes(port: int) -> str:
    """Command lines of the fleet's processes that are still running ('' when none)."""
    out = subprocess.run(["pgrep", "-af", "--", rf"--port {port}( |$)|--store 127\.0\.0\.1:{port}( |$)"],
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr  # 1: no process matched (2 would be a pgrep usage error)
    return out.stdout


ENV = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"}


def test_demo_trains_serves_and_reports_affinity_then_reuses_what_it_trained(tmp_path):
    port = fleet_base_port()  # fixed ports, checked (the second run below chooses free ones)
    demo = subprocess.Popen([*CLI, "demo", "--exit", "--workers", "2", "--port", str(port), "--requests", "24",
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=REPO)
    try:
        stdout, stderr = demo.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        demo.send_signal(signal.SIGTERM)  # the demo stops its fleet on SIGTERM
        stdout, stderr = demo.communicate(timeout=60)
        pytest.fail(f"the demo did not finish in 240 s:\n{stdout}\n{stderr}")
    assert demo.returncode == 0, f"{stdout}\n{stderr}"

    header, rows = _answer_table(stdout)
    assert header == ["prompt", "base model", *(f"{t.name}@prod" for t in TASKS)]
    assert len(rows) == 24 // len(header[1:])
    for prompt, base, *answers in rows:
        word = prompt.removesuffix(":")
        assert prompt == prompt_for(word) and word in WORDS
        assert answers == [t.answer(word) for t in TASKS], stdout
        assert base not in answers and len(set(answers)) == len(answers)

    rate = re.search(r"affinity hit rate (\d+\.\d)%", stdout)
    assert rate and 0.0 <= float(rate.group(1)) <= 100.0, stdout
    for t in TASKS:  # every request for an adapter counts once, as a hit or a miss
        hits, misses = map(int, re.search(rf"^\s+{t.name}@sha256:\S+\s+(\d+)\s+(\d+)", stdout, re.MULTILINE).groups())
        assert hits + misses == len(rows) and misses >= 1
    assert len(re.findall(r"^\s+127\.0\.0\.1:\d+\s+yes\s", stdout, re.MULTILINE)) == 2

    [pirate] = (tmp_path / "demo-adapters").glob("pirate-*")  # one cache entry per training recipe
    assert (pirate / "adapter_config.json").is_file() and (pirate / ".recipe.json").is_file()
    assert len(re.findall(r"^trained ", stdout, re.MULTILINE)) == len(TASKS) and not _fleet_processes(port)

    # the second run trains nothing: the same recipe finds the adapters of the first, and they are the same versions
    again = subprocess.run([*CLI, "demo", "--exit", "--workers", "1", "--port", "0", "--requests", "4", "--json",
                            "--data-dir", str(tmp_path)], capture_output=True, text=True, env=ENV, cwd=REPO,
                           timeout=240)
    assert again.returncode == 0, again.stderr
    assert len(re.findall(r"^reused ", again.stderr, re.MULTILINE)) == len(TASKS)
    assert not re.search(r"^trained ", again.stderr, re.MULTILINE)
    summary = json.loads(again.stdout)
    assert [(a["ref"], a["cached"], a["created"], a["version"]) for a in summary["adapters"]] == [
        (f"{t.name}@prod", True, False, 1) for t in TASKS]
    assert all(a["answer"] == task(a["adapter"].removesuffix("@prod")).answer(a["prompt"].removesuffix(":"))
               for a in summary["answers"] if a["adapter"])
    assert summary["fleet"]["router"] and summary["router_stats"]["requests"] == 4


def test_a_port_in_use_stops_the_demo_before_it_starts_anything(tmp_path):
    port = fleet_base_port()
    with socket.socket() as taken:  # the router's port is in use: the router could not start
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port + 20))
        taken.listen()
        out = subprocess.run([*CLI, "demo", "--exit", "--workers", "1", "--port", str(port), "--data-dir",
                              str(tmp_path)], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=240)
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith(f"error: port {port + 20} (the router's gRPC port) is in use on 127.0.0.1"), out.stderr
    assert "fleet starting" not in out.stdout and not list(tmp_path.glob("*.log"))
    assert not _fleet_processes(port)
