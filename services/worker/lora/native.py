"""The worker's native kernels, one library built on first use: each row's LoRA term (for decode rows, prefill rows
and a fused step's mix alike) and a decode step's attention.

A decode step with many distinct adapters must read every row's A and B once: 153 MB a step for 32 rank-16
adapters on every linear of the 56M Llama. torch's ops read them well under the memory's streaming rate (bmm /
baddbmm over stack views 5.7-5.9 ms a step on the 2-core AVX-512 box, embedding_bag slower), so the LoRA terms of a
32-row step cost about half again what their bytes do. ``native/lora_rows.cpp`` reads each row's A into a
rank-wide accumulator and adds B's rows scaled by it, one pass per row, rows split across the calling thread's
OpenMP team (the engine's): 4.6 ms for the same terms (``benchmarks/RESULTS.md``, "the native LoRA kernel"). A
prefill's tokens, runs of one stack row, are taken a few at a time with each of A's and B's rows loaded once for
them all, so rank-16 terms run near the FMA units' rate where torch's skinny matmuls do not.

``native/decode_attention.cpp`` is a decode step's attention (one query per row): bound by reading each row's keys
and values once, which torch's CPU flash attention is far from, and it reads only the positions a row attends to,
never the left padding of a batch whose rows joined at different times (:class:`DecodeAttention`).

It is compiled here, with the C++ compiler on PATH and torch's own headers and libraries, for this CPU
(``-march=native``), into ``directory/<key>/``: the key hashes the source, the flags, torch's version and the CPU's
feature flags, so a cache directory shared by other machines or torch versions never loads a library built for
another. A build takes ~6 s on the 2-core box and is then reused by every later process. Where there is no compiler
(or the build fails) :func:`build` raises :class:`KernelUnavailable` with the compiler's message, and the wrappers
keep torch's ops: the kernel changes speed, never results beyond float rounding.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

NATIVE = Path(__file__).with_name("native")
SOURCES = (NATIVE / "lora_rows.cpp", NATIVE / "decode_attention.cpp")  # compiled into one library
HEADERS = (NATIVE / "simd.h",)
# hidden visibility: the library exports nothing but its op registration, so none of the inline ATen code it
# carries can stand in for torch's own in the process (it is loaded RTLD_GLOBAL)
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-std=c++20", "-shared",
         "-fvisibility=hidden", "-fvisibility-inlines-hidden")
BUILD_TIMEOUT_S = 300.0
_LOADED: dict[str, LowRankKernel] = {}  # key -> the kernel loaded in this process (an op library loads once)
_LOCK = threading.Lock()


class KernelUnavailable(RuntimeError):
    """The native kernel could not be built or loaded here; torch's ops serve instead."""


class DecodeAttention:
    """One query per row against that row's keys and values: ``softmax(q . k * scale) . v`` over the positions the
    row's mask keeps (and its last, its own token), G = query heads / key-value heads query heads per key-value
    head."""

    def __init__(self, op: Callable[..., None]):
        self._op = op

    @staticmethod
    def takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Whether these are tensors the kernel runs on: float32 on the CPU, the head dimension contiguous, as many
        query heads per key-value head for each."""
        return (q.dtype == k.dtype == v.dtype == torch.float32 and q.device.type == "cpu" and k.device.type == "cpu"
                and v.device.type == "cpu" and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
                and k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                 scale: float) -> torch.Tensor:
        """q [B, Hq, D], k and v [B, Hkv, T, D], mask [B, T] (int64 or bool; nonzero: attended) -> [B, Hq, D]."""
        out = q.new_empty(q.shape)
        self._op(q, k, v, mask, scale, out)
        return out


class LowRankKernel:
    """``out[i] += (x[i] @ a[rows[i]]) @ b[rows[i]]`` for every item whose stack row is not 0, in place. ``attention``:
    the same library's :class:`DecodeAttention` (None: a stand-in without one)."""

    def __init__(self, op: Callable[..., None], key: str, attention: DecodeAttention | None = None):
        self._op = op
        self.key = key
        self.attention = attention

    def takes(self, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> bool:
        """Whether these tensors are ones the kernel runs on: float32 on the CPU, the stacks contiguous, x and
        ``out`` (None: one the caller makes) with contiguous rows."""
        return self.takes_rows(x2, out) and self.takes_stacks(a, b)

    @staticmethod
    def takes_rows(x2: torch.Tensor, out: torch.Tensor | None = None) -> bool:
        """The rows' part of :meth:`takes`: float32 on the CPU with contiguous rows."""
        return (x2.dtype == torch.float32 and x2.device.type == "cpu" and x2.stride(-1) == 1
                and (out is None or (out.dtype == torch.float32 and out.stride(-1) == 1)))

    @staticmethod
    def takes_stacks(a: torch.Tensor, b: torch.Tensor) -> bool:
        """The stacks' part of :meth:`takes` (a wrapper works it out once per stack): float32 on the CPU,
        contiguous."""
        return (a.dtype == b.dtype == torch.float32 and a.device.type == "cpu" and b.device.type == "cpu"
                and a.is_contiguous() and b.is_contiguous())

    def add_rows(self, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor,
                 out: torch.Tensor) -> torch.Tensor:
        """x2 [items, in], a [S, in, r], b [S, r, out], rows [items] (long), out [items, out]: returns ``out``."""
        self._op(x2, a, b, rows, out)
        return out


def compiler() -> str:
    """The C++ compiler on PATH; :class:`KernelUnavailable` where there is none."""
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise KernelUnavailable("no C++ compiler on PATH (c++, g++ or clang++); install one (e.g. apt-get install g++) "
                            "to build the native LoRA kernel")


def _cpu_flags() -> str:
    """This CPU's feature flags (what -march=native compiles for), or the machine name where /proc has none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine()


@functools.cache
def key() -> str:
    """What a build is kept under: a hash of the source, the flags, torch's version and this CPU's flags (worked out
    once per process: load and build both ask)."""
    try:
        sources = [path.read_bytes() for path in (*SOURCES, *HEADERS)]
    except OSError as exc:
        raise KernelUnavailable(f"the native kernels' sources cannot be read ({exc}); the package is installed "
                                "without them: reinstall adapterfleet") from exc
    digest = hashlib.sha256()
    for part in (*sources, " ".join(FLAGS).encode(), torch.__version__.encode(), _cpu_flags().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _library(directory: str | Path, k: str) -> Path:
    return Path(directory) / k / "lora_rows.so"


def load(directory: str | Path) -> LowRankKernel | None:
    """The kernel if a build for this source, torch and CPU is in ``directory`` (loaded once per process; a
    millisecond), else None. Raises :class:`KernelUnavailable` where that build does not load."""
    k = key()
    with _LOCK:
        if k in _LOADED:
            return _LOADED[k]
        library = _library(directory, k)
        return _load(library, k) if library.is_file() else None


def build(directory: str | Path) -> LowRankKernel:
    """The kernel, compiled into ``directory`` unless a build for this source, torch and CPU is there already, and
    loaded (once per process). Raises :class:`KernelUnavailable` saying why not."""
    k = key()
    with _LOCK:
        if k in _LOADED:
            return _LOADED[k]
    library = _library(directory, k)
    try:  # not under _LOCK: a build takes seconds, and load() in another thread need not wait for it
        library.parent.mkdir(parents=True, exist_ok=True)
        # one build at a time per directory, across processes and threads (each open of the file locks on its own)
        with open(library.parent / ".build.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not library.is_file():
                _compile(library, f"adapterfleet_{k}")
    except OSError as exc:
        raise KernelUnavailable(f"the native LoRA kernel cannot be built in {library.parent} ({exc}); give the "
                                "worker a writable --native-dir") from exc
    with _LOCK:
        return _LOADED[k] if k in _LOADED else _load(library, k)


def _load(library: Path, k: str) -> LowRankKernel:
    try:
        torch.ops.load_library(str(library))
        ops = getattr(torch.ops, f"adapterfleet_{k}")
        op, attention = ops.lora_rows_, ops.decode_attention_
    except (OSError, RuntimeError, AttributeError) as exc:
        raise KernelUnavailable(f"the native LoRA kernel at {library} does not load: {exc}; delete that directory "
                                "to rebuild it") from exc
    kernel = _LOADED[k] = LowRankKernel(op, k, DecodeAttention(attention))
    return kernel


def _compile(library: Path, namespace: str) -> None:
    torch_dir = Path(torch.__file__).parent
    lib_dir = torch_dir / "lib"
    # written beside its final name and renamed into place: another process building at the same time, or one that
    # was killed mid-build, never leaves a half-written library where a loader would find it
    fd, tmp = tempfile.mkstemp(prefix=".lora_rows-", suffix=".so", dir=library.parent)
    os.close(fd)
    include = torch_dir / "include"
    cmd = [compiler(), *FLAGS, f"-DADAPTERFLEET_NS={namespace}",
           "-isystem", str(include), "-isystem", str(include / "torch" / "csrc" / "api" / "include"),
           *map(str, SOURCES),
           f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}", "-lc10", "-ltorch_cpu", "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise KernelUnavailable(f"building the native LoRA kernel failed (exit {done.returncode}): {tail}")
        os.replace(tmp, library)
    except subprocess.TimeoutExpired as exc:
        raise KernelUnavailable(f"building the native LoRA kernel took over {BUILD_TIMEOUT_S:.0f} s") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_in_background(directory: str | Path, ready: Callable[[LowRankKernel], None],
                        failed: Callable[[KernelUnavailable], None]) -> threading.Thread:
    """:func:`build` on a thread of its own (a first build takes seconds; the worker serves with torch's ops
    meanwhile), then ``ready(kernel)`` or ``failed(error)`` on that thread."""

    def run() -> None:
        try:
            kernel = build(directory)
        except KernelUnavailable as exc:
            failed(exc)
        else:
            ready(kernel)

    thread = threading.Thread(target=run, name="adapterfleet-native-build", daemon=True)
    thread.start()
    return thread
