"""How long can one hostile request stall everybody else's? A Resolve and a Fetch probe (in their own process)
call a real store in a loop while each bad request runs; the figure is the probes' worst latency meanwhile.

    python benchmarks/store_stall.py [--store-tree DIR] [--store-flags "..."] [--only NAME ...] [--repeat 3]

The store runs as its own process (`adapterfleet store serve`, as in production) over redis-server and moto's S3
server, on free ports. `--store-tree DIR` runs the store from another checkout instead (for example
`git archive <rev> | tar -x -C DIR`), so the same hostile requests and probes measure before and after a change.
Payloads are built before each window opens, and the probes run in another process, so neither this process's
own work nor its GIL counts against the store. `--store-flags` adds flags to `store serve` (for example
"--validator-processes 0": validation in threads of the store's own process, as before). Each hostile request runs
``--repeat`` times and the median of its worst figures is printed: on a small shared machine a probe now and then
waits tens of ms for a CPU whatever the store does (the idle line shows how much).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from adapterfleet.common.channel import CHANNEL_OPTIONS  # noqa: E402
from adapterfleet.common.embedded_redis import RedisProcess, free_port  # noqa: E402
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc  # noqa: E402
from benchmarks._fleet import ENV, REPO, _wait_port  # noqa: E402

PROBE = "bench/probe"


# ---- the store under test --------------------------------------------------------------------------------------------


def _link_tree(src: Path, dst: Path) -> Path:
    """The import layout of a checkout (pyproject's package-dir), as links: what an install of ``src`` provides."""
    import tomllib

    dirs = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for pkg, folder in sorted(dirs.items()):  # "adapterfleet" first: the others link inside it
        target = dst.joinpath(*pkg.split("."))
        if pkg == "adapterfleet":
            target.mkdir(parents=True)
            for entry in (src / folder).iterdir():
                (target / entry.name).symlink_to(entry.resolve())
        else:
            target.symlink_to((src / folder).resolve())
    return dst


@contextlib.contextmanager
def running_store(tree: Path | None, flags: tuple[str, ...] = ()) -> Iterator[str]:
    redis = RedisProcess().start()
    s3_port, store_port = free_port(), free_port()
    env = dict(ENV)
    with tempfile.TemporaryDirectory() as tmp:
        if tree is not None:  # found before the installed (editable) package on sys.path
            env["PYTHONPATH"] = f"{_link_tree(tree, Path(tmp) / 'tree')}:{env['PYTHONPATH']}"
        procs = [subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
        try:
            _wait_port(s3_port)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "adapterfleet.cli.main", "store", "serve", "--port", str(store_port),
                 "--redis-url", redis.url, "--s3-endpoint", f"http://127.0.0.1:{s3_port}", "--bucket", "stall",
                 "--insecure", "--log-level", "ERROR", "--data-dir", f"{tmp}/data", *flags],
                stdout=subprocess.DEVNULL, env=env, cwd=tmp))
            _wait_port(store_port)
            yield f"127.0.0.1:{store_port}"
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(10)
            redis.stop()


# ---- adapters built in memory ----------------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, tuple[int, ...]]) -> bytes:
    """F32 tensors of the given shapes, all zeros, in the safetensors layout."""
    header: dict[str, dict] = {}
    offset = 0
    for name, shape in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def lora_layers(modules: list[str], r: int = 1, dim: int = 1) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for m in modules:
        out[f"base_model.model.{m}.lora_A.weight"] = (r, dim)
        out[f"base_model.model.{m}.lora_B.weight"] = (dim, r)
    return out


def config_bytes(**fields) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 2, **fields}).encode()


def push_messages(name: str, files: dict[str, bytes], chunk: int = 1 << 20) -> list[store_pb2.PushRequest]:
    entries = [common_pb2.FileEntry(name=f, size=len(b), sha256=hashlib.sha256(b).hexdigest())
               for f, b in files.items()]
    out = [store_pb2.PushRequest(header=store_pb2.PushHeader(name=name, files=entries))]
    for f, b in files.items():
        out += [store_pb2.PushRequest(chunk=store_pb2.Chunk(file=f, offset=o, data=b[o:o + chunk]))
                for o in range(0, len(b), chunk)]
    return out


# ---- the hostile requests --------------------------------------------------------------------------------------------


@dataclass
class Attack:
    name: str
    prepare: Callable[[], Callable[[store_pb2_grpc.AdapterStoreStub, float], object]]


def _push(name: str, config: bytes, weights: bytes):
    msgs = push_messages(name, {"adapter_config.json": config, "adapter_model.safetensors": weights})
    return lambda stub, timeout: stub.Push(iter(msgs), timeout=timeout)


def regex_attack(pattern: str, module: str):
    return lambda: _push("bench/regex", config_bytes(target_modules=pattern),
                         safetensors_bytes(lora_layers([module])))


def rank_pattern_attack(keys: int, modules: int):
    """Many rank_pattern keys (none matching) times many modules: peft looks up every key for every module."""
    def prepare():
        pattern = {f"nomatch_{i}": 2 for i in range(keys)}
        config = config_bytes(target_modules=["q"], rank_pattern=pattern)
        return _push("bench/rank-pattern", config, safetensors_bytes(lora_layers([f"m.{i}.q" for i in range(modules)])))
    return prepare


def modules_to_save_attack(entries: int, modules: int):
    def prepare():
        config = config_bytes(target_modules=["q"], modules_to_save=[f"keep_{i}" for i in range(entries)])
        return _push("bench/mts", config, safetensors_bytes(lora_layers([f"m.{i}.q" for i in range(modules)])))
    return prepare


def big_header_attack(modules: int):
    """A valid adapter whose safetensors header is near the 2 MiB limit: parsing and checking it is real work."""
    def prepare():
        names = [f"model.layers.{i}.self_attn.q_proj" for i in range(modules)]
        weights = safetensors_bytes(lora_layers(names))
        return _push("bench/big-header", config_bytes(target_modules=["q_proj"]), weights)
    return prepare


def missing_blobs_attack(n: int):
    def prepare():
        req = store_pb2.MissingBlobsRequest(sha256=[hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)])
        return lambda stub, timeout: stub.MissingBlobs(req, timeout=timeout)
    return prepare


def many_files_attack(n: int):
    def prepare():
        files = [common_pb2.FileEntry(name=f"f{i}.md", size=1, sha256="0" * 64) for i in range(n)]
        msgs = [store_pb2.PushRequest(header=store_pb2.PushHeader(name="bench/files", files=files))]
        return lambda stub, timeout: stub.Push(iter(msgs), timeout=timeout)
    return prepare


def many_targets_attack(n: int):
    def prepare():
        req = store_pb2.SetAliasRequest(name=PROBE, alias="x",
                                        targets=[common_pb2.AliasTarget(version=i, weight=1) for i in range(n)])
        return lambda stub, timeout: stub.SetAlias(req, timeout=timeout)
    return prepare


def bad_cursor_attack():
    def call(stub, timeout):
        for _ in stub.Watch(store_pb2.WatchRequest(cursor="abc"), timeout=timeout):
            break
    return lambda: call


ATTACKS = [
    Attack("target_modules '(a+)+b', 28 a's", regex_attack("(a+)+b", "a" * 28)),
    Attack("target_modules '(a|aa)+b', 34 a's", regex_attack("(a|aa)+b", "a" * 34)),
    Attack("rank_pattern 1000 keys x 500 modules", rank_pattern_attack(1000, 500)),
    Attack("modules_to_save 5000 x 200 modules", modules_to_save_attack(5000, 200)),
    Attack("safetensors header ~1.9 MiB (15k tensors)", big_header_attack(7_500)),
    Attack("MissingBlobs 5000 digests", missing_blobs_attack(5000)),
    Attack("MissingBlobs 256 digests (the new limit)", missing_blobs_attack(256)),
    Attack("push header with 300k files", many_files_attack(300_000)),
    Attack("SetAlias with 2M targets", many_targets_attack(2_000_000)),
    Attack("Watch cursor 'abc'", bad_cursor_attack()),
]


# ---- the probes (another process) ------------------------------------------------------------------------------------


def _probe(address: str, stop, out) -> None:
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    stub = store_pb2_grpc.AdapterStoreStub(channel)
    samples: list[tuple[str, float, float]] = []  # (kind, start, latency); kind "<kind> failed" for an error

    def loop(kind: str, call: Callable[[], object]) -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                call()
                samples.append((kind, t, time.monotonic() - t))
            except grpc.RpcError:
                samples.append((f"{kind} failed", t, time.monotonic() - t))
            time.sleep(0.002)

    threads = [
        threading.Thread(target=loop, args=("resolve", lambda: stub.Resolve(
            store_pb2.ResolveRequest(ref=f"{PROBE}@1"), timeout=300))),
        threading.Thread(target=loop, args=("fetch", lambda: list(stub.Fetch(
            store_pb2.FetchRequest(ref=f"{PROBE}@1"), timeout=300)))),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.send(samples)
    channel.close()


def _worst(samples, kind: str, t0: float, t1: float) -> float:
    lat = [lat for k, t, lat in samples if k == kind and t < t1 and t + lat > t0]
    return max(lat, default=0.0)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store-tree", type=Path, help="run the store from this checkout (a baseline)")
    ap.add_argument("--store-flags", default="", help="more flags for `store serve`, e.g. '--validator-processes 0'")
    ap.add_argument("--only", nargs="*", help="substrings of the attacks to run")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on one hostile request after this long")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each hostile request (the median is printed)")
    args = ap.parse_args()
    attacks = [a for a in ATTACKS if not args.only or any(s in a.name for s in args.only)]
    flags = tuple(shlex.split(args.store_flags))
    with running_store(args.store_tree, flags) as address:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        stub = store_pb2_grpc.AdapterStoreStub(channel)
        stub.Push(iter(push_messages(PROBE, {
            "adapter_config.json": config_bytes(target_modules=["q_proj"], r=4),
            "adapter_model.safetensors": safetensors_bytes(lora_layers(["model.layers.0.self_attn.q_proj"], 4, 64)),
        })), timeout=60)
        ctx = mp.get_context("spawn")
        stop, (recv, send) = ctx.Event(), ctx.Pipe(duplex=False)
        probe = ctx.Process(target=_probe, args=(address, stop, send))
        probe.start()
        time.sleep(3.0)  # idle baseline
        idle_end = time.monotonic()
        windows: dict[str, list[tuple[str, float, float]]] = {}
        for attack in attacks:
            call = attack.prepare()
            for _ in range(args.repeat):
                time.sleep(0.5)
                t0 = time.monotonic()
                try:
                    call(stub, args.timeout)
                    outcome = "OK"
                except grpc.RpcError as err:
                    outcome = err.code().name
                t1 = time.monotonic()
                windows.setdefault(attack.name, []).append((outcome, t0, t1))
                # the store may still be busy after the caller gave up: wait until it answers before the next one
                stub.Resolve(store_pb2.ResolveRequest(ref=f"{PROBE}@1"), timeout=3600)
        stop.set()
        samples = recv.recv()
        probe.join()
        channel.close()
    idle = {kind: [lat for k, t, lat in samples if k == kind and t + lat < idle_end] for kind in ("resolve", "fetch")}
    print(f"store: {args.store_tree or REPO}{' ' + ' '.join(flags) if flags else ''}; {args.repeat} run(s) of each, "
          "medians")
    print("idle: " + "; ".join(f"{kind.capitalize()} p50 {1e3 * _pct(lat, .5):.1f} ms, p99 {1e3 * _pct(lat, .99):.1f} "
                               f"ms, max {1e3 * max(lat):.1f} ms" for kind, lat in idle.items()))
    failed = sum(k.endswith("failed") for k, _, _ in samples)
    print(f"probe calls: {len(samples)}, failed: {failed}")
    print(f"{'hostile request':44} {'outcome':20} {'its time':>9} {'Resolve worst':>14} {'Fetch worst':>12}")
    for name, runs in windows.items():
        outcomes = "/".join(sorted({o for o, _, _ in runs}))
        took, worst_r, worst_f = (statistics.median(f(t0, t1) for _, t0, t1 in runs) for f in (
            lambda t0, t1: t1 - t0, lambda t0, t1: _worst(samples, "resolve", t0, t1),
            lambda t0, t1: _worst(samples, "fetch", t0, t1)))
        print(f"{name:44} {outcomes:20} {took:8.2f}s {1e3 * worst_r:12.1f}ms {1e3 * worst_f:10.1f}ms")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
