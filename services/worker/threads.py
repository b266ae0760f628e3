"""In a serving worker, only the engine's thread runs torch's intra-op parallelism.

torch's CPU kernels and oneDNN's GEMMs run their parallel regions on OpenMP thread teams, one team per calling
thread, kept for the life of that thread. Once GNU OpenMP manages more threads than the process has CPUs, it stops
spinning between regions and puts each team to sleep after every region, so each region then pays futex wake-ups.
A decode step is hundreds of small regions: a second team anywhere in the process (the thread that loaded the
model, an idle executor thread that once installed an adapter) slows every step of the engine. Measured on the
2-core box, the same decode step of the 56M Llama with 32 distinct adapters: 33.7 ms on the main thread, 44.7 ms
on a second thread while the main thread's team exists (1 adapter: 27.5 vs 40.0 ms); a thread whose process has no
other team runs as fast as the main thread.

So :func:`serve <adapterfleet.worker.server.serve>` runs the event loop's thread and every executor thread at one
torch thread (no team), and the engine's thread at ``WorkerConfig.threads``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


def cpus(cpu_max: Path = CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota (a container's CPU limit,
    rounded up), so a worker in a 2-CPU container on a 64-CPU node does not start 64 threads."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or one that does not parse: the mask alone
        pass
    return n


def engine_threads(requested: int) -> int:
    """The engine thread's torch threads: ``requested``, or every CPU this process may run on when 0."""
    return requested if requested > 0 else cpus()


def pin(n: int) -> None:
    """Run this thread's torch ops on ``n`` threads, for the life of the thread.

    torch gives each thread, on its first parallel op, the count last set by *any* thread, and ``get_num_threads``
    is such a first use: calling it before ``set_num_threads`` settles that, so a later call in another thread (an
    executor thread's :func:`single`) cannot reset this one. Without it the engine ran on one thread."""
    torch.get_num_threads()
    torch.set_num_threads(n)


def single() -> None:
    """This thread's torch ops run on it alone (it never starts an OpenMP team)."""
    pin(1)


def side_executor() -> ThreadPoolExecutor:
    """An executor for blocking work beside the engine (fetch, parse, install): each thread at one torch thread."""
    return ThreadPoolExecutor(thread_name_prefix="adapterfleet-side", initializer=single)
