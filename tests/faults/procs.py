"""Real processes for the fault suite and the soak benchmark: workers started with the operator's own command
(``adapterfleet worker serve``), so that a test can SIGKILL or SIGTERM one and read its RSS from /proc.

    workers = start_workers(3, store=address, base_model=base, disk_dir=tmp / "cache", logs=tmp)
    workers[0].kill()          # kill -9: no drain, no goodbye to the registry
    workers[1].terminate()     # SIGTERM: the worker drains, then exits 0

Also here: :func:`rss_kib` (VmRSS of any pid) and :func:`load_unload_cycles`, the loop both the CI test and
``benchmarks/soak.py --cycles`` run against a worker process.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.v1 import common_pb2, worker_pb2, worker_pb2_grpc

READY = re.compile(r"worker listening on (\S+):(\d+)")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS in /proc/PID/status), KiB; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class WorkerProcess:
    """``adapterfleet worker serve --port 0`` as a child process; ready once it prints its "listening" line."""

    def __init__(self, name: str, *, store: str, base_model: str | Path, disk_dir: str | Path, log_dir: str | Path,
                 max_slots: int = 4, drain_s: float = 30.0, threads: int | None = 1, extra: Sequence[str] = ()):
        self.name = name
        self.log = Path(log_dir) / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-u", "-m", "adapterfleet.cli.main", "worker", "serve", "--insecure", "--port", "0",
                "--store", store, "--base-model", str(base_model), "--disk-cache-dir", str(disk_dir),
                "--max-slots", str(max_slots), "--drain-seconds", str(drain_s), "--metrics-port", "0",
                "--log-format", "text", *extra]
        # Several workers on a small machine: torch's OpenMP pool defaults to every core in each of them, and the
        # pools spin against each other (3 workers on 2 cores decode 3-7x slower than with one thread each).
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        with open(self.log, "ab") as err:  # the child keeps its own handle
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.address = ""
        self._channel: grpc.Channel | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 180.0) -> WorkerProcess:
        stdout = self.proc.stdout
        assert stdout is not None  # stdout=PIPE
        readable, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if readable else ""
        match = READY.search(line)
        if match is None:
            self.kill()
            raise RuntimeError(f"worker {self.name} did not start ({line.strip()!r}); its log {self.log}:\n"
                               f"{self.log.read_text(errors='replace')[-3000:]}")
        self.address = f"{match.group(1)}:{match.group(2)}"
        # keep reading whatever else it prints, so that a full pipe never blocks it
        threading.Thread(target=lambda: stdout.read(), daemon=True).start()
        return self

    def stub(self) -> worker_pb2_grpc.WorkerStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return worker_pb2_grpc.WorkerStub(self._channel)

    def stats(self) -> worker_pb2.WorkerStats:
        return self.stub().Stats(worker_pb2.StatsRequest(), timeout=10)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the worker drains (readiness down, registry told, in-flight calls finish), then exits."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.alive:
            self.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(10)


def start_workers(n: int, *, first: int = 0, **kwargs) -> list[WorkerProcess]:
    """``n`` worker processes started at once (each spends seconds importing torch); all ready, or none left."""
    workers = [WorkerProcess(f"worker-{first + i}", **kwargs) for i in range(n)]
    try:
        for w in workers:
            w.wait_ready()
    except BaseException:
        for w in workers:
            w.close()
        raise
    return workers


# --- load/unload cycles ---------------------------------------------------------------------------------------------


@dataclass
class CycleReport:
    cycles: int
    warmup: int
    rss_warm_kib: int                     # after the warm-up cycles
    rss_end_kib: int                      # after all cycles
    samples: list[tuple[int, int]] = field(default_factory=list)  # (cycles done, RSS KiB)
    seconds: float = 0.0

    @property
    def growth(self) -> float:
        """RSS growth from the end of the warm-up to the end, as a fraction of the warm RSS."""
        return (self.rss_end_kib - self.rss_warm_kib) / self.rss_warm_kib


def load_unload_cycles(stub: worker_pb2_grpc.WorkerStub, pid: int, refs: Sequence[str], cycles: int, *,
                       warmup: int = 50, samples: int = 50,
                       on_sample: Callable[[int, int], None] | None = None) -> CycleReport:
    """``warmup`` then ``cycles`` rounds of LoadAdapter(ref, active slot) + UnloadAdapter(ref) on the worker at
    ``stub`` (process ``pid``), over ``refs`` in turn; every unload drops every tier, so every load fetches, verifies
    and injects again. RSS is sampled ``samples`` times along the way."""

    def cycle(i: int) -> None:
        ref = refs[i % len(refs)]
        stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=ref, tier=common_pb2.TIER_ACTIVE), timeout=60)
        if not stub.UnloadAdapter(worker_pb2.UnloadAdapterRequest(ref=ref), timeout=60).unloaded:
            raise AssertionError(f"cycle {i}: {ref} was not resident after its load")

    for i in range(warmup):
        cycle(i)
    report = CycleReport(cycles=cycles, warmup=warmup, rss_warm_kib=rss_kib(pid), rss_end_kib=0)
    report.samples.append((0, report.rss_warm_kib))
    every = max(1, cycles // max(1, samples))
    started = time.perf_counter()
    for i in range(cycles):
        cycle(warmup + i)
        if (i + 1) % every == 0 or i + 1 == cycles:
            rss = rss_kib(pid)
            report.samples.append((i + 1, rss))
            if on_sample:
                on_sample(i + 1, rss)
    report.seconds = time.perf_counter() - started
    report.rss_end_kib = report.samples[-1][1]
    return report
