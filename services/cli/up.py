"""`adapterfleet up`: a whole fleet on localhost: store (embedded default), N workers, a router.

Each part is its own process, started with the same commands an operator would use; the addresses are printed;
Ctrl-C (or SIGTERM) stops everything, workers draining first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.common.errors import Unavailable


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)


def _ready(proc: subprocess.Popen, ready: str, log: Path) -> None:
    if ready not in proc.stdout.readline():
        proc.kill()
        raise Unavailable(f"`adapterfleet {' '.join(map(str, proc.args[3:5]))}` did not start; see {log}")


def run_up(args) -> int:
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    base = args.base_model
    if not base:
        from services.demo.base_model import build_demo_base

        base = str(build_demo_base(data / "demo-base"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    store_addr = f"127.0.0.1:{args.port}"
    procs: list[subprocess.Popen] = []

    def stop(*_):
        for proc in reversed(procs):  # router, then workers (they drain), then the store
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        return 0

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        procs.append(_spawn(["store", "serve", "--port", str(args.port), "--data-dir", str(data / "store")],
                            env, data / "store.log"))
        _ready(procs[0], "store listening", data / "store.log")
        env["ADAPTERFLEET_STORE"] = store_addr
        workers = [f"127.0.0.1:{args.port + 10 + i}" for i in range(args.workers)]
        for i, address in enumerate(workers):  # all at once: each spends seconds importing torch
            procs.append(_spawn(["worker", "serve", "--port", address.rsplit(":", 1)[1], "--base-model", base,
                                 "--disk-cache-dir", str(data / f"worker-{i}"), "--max-slots", str(args.max_slots)],
                                env, data / f"worker-{i}.log"))
        router = f"127.0.0.1:{args.port + 20}"
        procs.append(_spawn(["router", "serve", "--port", str(args.port + 20)], env, data / "router.log"))
        for i, proc in enumerate(procs[1:-1]):
            _ready(proc, "worker listening", data / f"worker-{i}.log")
        _ready(procs[-1], "router listening", data / "router.log")
        print(f"store   {store_addr}\nworkers {' '.join(workers)}\nrouter  {router}\nbase    {base}\n"
              f"logs    {data}/*.log\n"
              f"try:    adapterfleet generate --router {router} --prompt 'hello' --json\n"
              "Ctrl-C stops the fleet.", flush=True)
        if args.exit_after is not None:
            time.sleep(args.exit_after)
            return stop()
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [p.args[3:5] for p in procs if p.poll() is not None]
        print(f"a fleet process exited: {dead}; stopping the rest", file=sys.stderr)
        stop()
        return 1
    except KeyboardInterrupt:
        return stop()
    except BaseException:
        stop()
        raise
