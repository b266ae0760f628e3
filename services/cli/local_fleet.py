"""A whole fleet on localhost as child processes: store (embedded default), N workers, a router.

Each part is started with the same command an operator would use (``adapterfleet store serve`` ...), logs to
``<data-dir>/<part>.log`` and is ready once it prints its "... listening" line. Used by ``adapterfleet up`` and
``adapterfleet demo``::

    fleet = LocalFleet(FleetConfig(data_dir, base_model, workers=2))
    with fleet:              # launch: the store is up; workers and the router are booting (importing torch)
        ...                  # do something useful meanwhile
        fleet.wait_ready()   # every part printed its "listening" line
    # leaving the block stops the router, then the workers (they drain), then the store
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from adapterfleet.common.errors import InvalidArgument, Unavailable
from adapterfleet.store.config import PORT as STORE_PORT
from adapterfleet.worker.config import WorkerConfig

DATA_DIR = ".adapterfleet"  # `adapterfleet up` and `demo`: the store, worker caches, logs and the demo's files
MAX_WORKERS = 10  # workers take PORT+10 .. PORT+19; the router PORT+20
SPAN = 50  # the fleet's ports: gRPC PORT..PORT+20; Prometheus /metrics: store PORT+30, router +31, workers +40..+49


@dataclass(frozen=True)
class FleetConfig:
    data_dir: Path
    base_model: str  # a directory written by save_pretrained
    port: int = STORE_PORT  # the store's; workers take PORT+10.., the router PORT+20, /metrics PORT+30..
    workers: int = 2
    max_slots: int = WorkerConfig.max_slots
    ready_timeout_s: float = 180.0  # for every part together; a worker spends seconds importing torch
    stop_timeout_s: float = 15.0  # per part, after SIGTERM; then it is killed

    def __post_init__(self):
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InvalidArgument(f"--workers {self.workers} must be 1..{MAX_WORKERS}: workers take ports "
                                  f"PORT+10..PORT+{9 + MAX_WORKERS}")
        if not 1 <= self.port <= 65535 - SPAN:
            raise InvalidArgument(f"--port {self.port} must be 1..{65535 - SPAN}: the fleet takes "
                                  f"PORT..PORT+{SPAN - 1}")

    @property
    def store_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def worker_addresses(self) -> list[str]:
        return [f"127.0.0.1:{self.port + 10 + i}" for i in range(self.workers)]

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.port + 20}"

    def metrics_port(self, part: str) -> int:
        """Where ``part`` ("store", "router", "worker-N") serves Prometheus /metrics."""
        if part.startswith("worker-"):
            return self.port + 40 + int(part.removeprefix("worker-"))
        return self.port + {"store": 30, "router": 31}[part]


@dataclass
class _Part:
    name: str  # "store", "worker-0", "router"
    proc: subprocess.Popen[str]
    log: Path
    ready_line: str
    ready: bool = False

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None  # started with stdout=PIPE
        return self.proc.stdout


class LocalFleet:
    def __init__(self, cfg: FleetConfig):
        self.cfg = cfg
        self._parts: list[_Part] = []

    # --- lifecycle --------------------------------------------------------------------------------------------------
    def launch(self) -> None:
        """Start the store and wait for it; then start the workers and the router without waiting for them."""
        if self._parts:
            raise RuntimeError("this fleet was already launched")
        cfg, data = self.cfg, Path(self.cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("store", ["store", "serve", "--port", str(cfg.port), "--data-dir", str(data / "store")],
                    "store listening")
        self._wait(self._parts[:1], time.monotonic() + cfg.ready_timeout_s)
        store = ["--store", cfg.store_address]
        for i, address in enumerate(cfg.worker_addresses):  # all at once: each spends seconds importing torch
            self._spawn(f"worker-{i}", ["worker", "serve", "--port", address.rsplit(":", 1)[1], *store,
                                        "--base-model", str(cfg.base_model), "--disk-cache-dir",
                                        str(data / f"worker-{i}"), "--max-slots", str(cfg.max_slots)],
                        "worker listening")
        self._spawn("router", ["router", "serve", "--port", str(cfg.port + 20), *store], "router listening")

    def wait_ready(self) -> None:
        """Block until every part printed its "listening" line; Unavailable (naming the log) if one did not."""
        self._wait(self._parts, time.monotonic() + self.cfg.ready_timeout_s)

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def dead(self) -> list[str]:
        """The parts that have exited."""
        return [p.name for p in self._parts if p.proc.poll() is not None]

    def check(self) -> None:
        """Raise Unavailable (naming the log) if a part has exited; cheap enough to call between steps of work."""
        for part in self._parts:
            code = part.proc.poll()
            if code is None:
                continue
            if not part.ready:
                self._wait([part], time.monotonic())  # reads what it printed, raises with the reason
            raise Unavailable(f"the fleet's {part.name} exited (status {code}); see {part.log}:\n{_tail(part.log)}")

    def wait(self, poll_s: float = 0.5) -> list[str]:
        """Block until some part exits; return the parts that did."""
        while not self.dead():
            time.sleep(poll_s)
        return self.dead()

    def stop(self) -> None:
        """SIGTERM the router, then the workers (they drain and tell the registry), then the store; each stage is
        waited for before the next, and a part that outlives the timeout is killed."""
        parts, self._parts = self._parts, []
        stages = [[p for p in parts if p.name == "router"], [p for p in parts if p.name.startswith("worker")],
                  [p for p in parts if p.name == "store"]]
        try:
            for stage in stages:
                for part in stage:
                    if part.proc.poll() is None:
                        part.proc.send_signal(signal.SIGTERM)
                for part in stage:
                    try:
                        part.proc.wait(self.cfg.stop_timeout_s)
                    except subprocess.TimeoutExpired:
                        part.proc.kill()
                        part.proc.wait()
        except BaseException:  # a second Ctrl-C (or SIGTERM) while stopping: no more patience
            for part in parts:
                if part.proc.poll() is None:
                    part.proc.kill()
            raise
        finally:
            for part in parts:
                part.stdout.close()

    def __enter__(self) -> LocalFleet:
        try:
            self.launch()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what to tell the user --------------------------------------------------------------------------------------
    def describe(self) -> str:
        cfg = self.cfg
        return (f"store   {cfg.store_address}\nworkers {' '.join(cfg.worker_addresses)}\n"
                f"router  {cfg.router_address}\nbase    {cfg.base_model}\nlogs    {cfg.data_dir}/*.log\n"
                f"metrics http://127.0.0.1:PORT/metrics: store {cfg.metrics_port('store')}, router "
                f"{cfg.metrics_port('router')}, workers {cfg.port + 40}-{cfg.port + 39 + cfg.workers}")

    # --- plumbing ---------------------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], ready_line: str) -> None:
        log = Path(self.cfg.data_dir) / f"{name}.log"
        args = [*args, "--metrics-port", str(self.cfg.metrics_port(name)), "--metrics-host", "127.0.0.1"]
        with open(log, "ab") as err:  # the child keeps its own handle
            proc = subprocess.Popen([sys.executable, "-u", "-m", "adapterfleet.cli.main", *args],
                                    stdout=subprocess.PIPE, stderr=err, text=True)
        self._parts.append(_Part(name, proc, log, ready_line))

    def _wait(self, parts: list[_Part], deadline: float) -> None:
        """Read each part's first line, all at once: a part that fails is reported as soon as it exits."""
        pending = {p.stdout: p for p in parts if not p.ready}
        while pending:
            # Nothing was read from these pipes before, so select() sees every byte the children wrote.
            readable, _, _ = select.select(list(pending), [], [], max(deadline - time.monotonic(), 0))
            if not readable:
                names = ", ".join(p.name for p in pending.values())
                part = next(iter(pending.values()))
                raise Unavailable(f"the fleet's {names} did not start in {self.cfg.ready_timeout_s:.0f}s; see "
                                  f"{part.log}:\n{_tail(part.log)}")
            for pipe in readable:
                part = pending.pop(pipe)
                line = pipe.readline()
                if part.ready_line not in line:
                    why = (f"printed {line.strip()!r} instead of {part.ready_line!r}" if line
                           else f"exited (status {part.proc.wait()}) before it was ready")
                    raise Unavailable(f"the fleet's {part.name} {why}; see {part.log}:\n{_tail(part.log)}")
                part.ready = True


def _tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("  " + line for line in text[-lines:]) or "  (empty)"


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, so it stops a fleet the way Ctrl-C does."""

    def handler(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
