"""Push and pull of a ~100 MB adapter through the store vs raw boto3 put/get of the same bytes, same endpoint.

    python benchmarks/store_throughput.py [--mb 100] [--repeat 3] [--plot-dir benchmarks/plots]

The store runs as its own process (as in production) in front of moto's S3 server; the client and raw boto3 run
here. Push includes everything a user waits for (hashing the files, dedupe check, streaming, validation,
verification, multipart upload, the Redis commit); pull includes sha256 verification of every byte.

Pulls, each a full ``StoreClient.fetch`` into memory: *direct* (the default: the store answers presigned URLs and
the client GETs the blobs from S3 itself; a large file as parallel ranged GETs or as one GET, whichever the client
measured to be faster for the endpoint: ranges the first time, one GET the second), *direct, one stream* (one GET
per file), and *through the store* (URLs off: every byte crosses the store process, the fallback path).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import boto3

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from adapterfleet.store.client import StoreClient  # noqa: E402
from adapterfleet.store.direct_fetch import DirectFetchConfig  # noqa: E402
from benchmarks import _plot  # noqa: E402
from benchmarks._design import balanced_orders, median_ci  # noqa: E402
from benchmarks._fleet import s3_and_store  # noqa: E402
from tests.helpers.synthetic import big_adapter  # noqa: E402

WRITES = ("push", "put", "upload")  # each round runs these in one of balanced_orders(3), then
READS = ("pull", "single", "streamed", "get", "download")  # these in one of balanced_orders(5)


def round_ops(i: int, d: Path, s3, clients: dict[str, StoreClient]) -> dict[str, Callable[[], object]]:
    """Round ``i``'s operations on the adapter in ``d``, by name; the reads need the writes before them."""
    payload = (d / "adapter_model.safetensors").read_bytes()
    pushed: list[str] = []
    ops: dict[str, Callable[[], object]] = {
        "push": lambda: pushed.append(str(clients["pull"].push_dir(d, f"bench-{i}").manifest.key)),
        "put": lambda: s3.put_object(Bucket="raw", Key=f"raw-{i}", Body=payload),
        # boto3's managed transfer (multipart, 10 threads), as most tools use it
        "upload": lambda: s3.upload_fileobj(io.BytesIO(payload), "raw", f"managed-{i}"),
        "get": lambda: s3.get_object(Bucket="raw", Key=f"raw-{i}")["Body"].read(),
        "download": lambda: s3.download_fileobj("raw", f"managed-{i}", io.BytesIO()),
    }
    for name, client in clients.items():
        ops[name] = partial(lambda c: c.fetch(pushed[0]), client)
    return ops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=6, help="rounds (6: every write runs first, second and third "
                    "twice, after each of the others alike)")
    _plot.add_argument(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, s3_and_store() as (endpoint, address):
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        s3.create_bucket(Bucket="raw")
        client = StoreClient(address)
        single = StoreClient(address, direct=DirectFetchConfig(streams=1))
        streamed = StoreClient(address, direct=DirectFetchConfig(enabled=False))
        dirs = [big_adapter(Path(tmp) / f"a{i}", args.mb, seed=i) for i in range(args.repeat)]
        write_orders, read_orders = balanced_orders(len(WRITES)), balanced_orders(len(READS))
        size = sum(f.stat().st_size for f in dirs[0].iterdir())
        secs: dict[str, list[float]] = {name: [] for name in (*WRITES, *READS)}
        for i, d in enumerate(dirs):  # fresh content each round: no dedupe flatters the store
            ops = round_ops(i, d, s3, {"pull": client, "single": single, "streamed": streamed})
            for names, orders in ((WRITES, write_orders), (READS, read_orders)):
                for j in orders[i % len(orders)]:
                    t = time.perf_counter()
                    ops[names[j]]()
                    secs[names[j]].append(time.perf_counter() - t)
        push_s, put_s, up_s = secs["push"], secs["put"], secs["upload"]
        pull_s, single_s, stream_s, get_s, down_s = (secs[k] for k in READS)
        assert streamed.direct.stats["files"] == 0 and client.direct.stats["fallbacks"] == 0
        mb = size / 1e6
        rows = [("push (store)", push_s), ("put_object (raw boto3)", put_s), ("upload_fileobj (boto3)", up_s),
                ("pull direct (URLs, verified)", pull_s), ("pull direct, one stream", single_s),
                ("pull through the store", stream_s), ("get_object (raw boto3)", get_s),
                ("download_fileobj (boto3)", down_s)]
        print(f"adapter: {mb:.1f} MB, {args.repeat} rounds, median")
        for label, took in rows:
            print(f"  {label:30s} {mb / statistics.median(took):8.1f} MB/s   ({statistics.median(took):.3f} s)")
        med = statistics.median
        print(f"push / raw put_object: {med(put_s) / med(push_s):.2f}x (goal >= 0.80x)   pull / raw get_object: "
              f"{med(get_s) / med(pull_s):.2f}x (goal >= 0.90x)")
        print(f"  one-stream direct pull / raw get_object: {med(get_s) / med(single_s):.2f}x   through the store / "
              f"raw get_object: {med(get_s) / med(stream_s):.2f}x")
        print(f"push / upload_fileobj: {med(up_s) / med(push_s):.2f}x   pull / download_fileobj: "
              f"{med(down_s) / med(pull_s):.2f}x")
        ways = {True: "ranged", False: "one GET"}
        measured = client.direct.ranges.rates(endpoint.split("//")[-1])
        rates = {ways[k]: f"{v / 1e6:.0f} MB/s" for k, v in measured.items()}
        print("each pull at the defaults / raw get_object (s): "
              + ", ".join(f"{p:.3f}/{g:.3f}" for p, g in zip(pull_s, get_s, strict=True))
              + f"   (ranged first, then one GET, then the faster: measured {rates})")
        print("paired by round (raw's time / ours in the same round; median [95% CI, sign test over rounds]):")
        for label, ours, raw in (("push / raw put_object", push_s, put_s), ("pull / raw get_object", pull_s, get_s)):
            ratios = [r / o for o, r in zip(ours, raw, strict=True)]
            lo, hi = median_ci(ratios)
            print(f"  {label}: {med(ratios):.2f}x [{lo:.2f}, {hi:.2f}]   rounds: "
                  + " ".join(f"{x:.2f}" for x in ratios))
    _plot.store_throughput(args.plot_dir, mb=mb, rounds=args.repeat, seconds={
        "push": med(push_s), "put": med(put_s), "upload": med(up_s), "pull": med(pull_s), "get": med(get_s),
        "download": med(down_s)})


if __name__ == "__main__":
    main()
