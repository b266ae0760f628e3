"""`adapterfleet` — the command line. Reads flags and environment here, once; nothing below reads either.

The client commands (push, pull, ls, resolve, alias, generate, score, watch, yank, gc) need only the base
install and start fast; a serving command first checks that its extra is installed
(:mod:`adapterfleet.common.extras`) and then imports torch, redis or boto3. Every default is read from the typed
config it ends up in (WorkerConfig, RouterConfig, StoreConfig, FleetConfig), so it is defined once.
"""

from __future__ import annotations

import argparse
import os
import sys

from adapterfleet.cli import admin, auth_cmd, report, rollout
from adapterfleet.cli.auth_flags import add_auth_flags, add_revoke_parser
from adapterfleet.cli.flags import add_tls_flags, parse_layered
from adapterfleet.cli.generate_flags import add_generation_flags
from adapterfleet.cli.local_fleet import DATA_DIR, FleetConfig
from adapterfleet.cli.signing_flags import add_sign_key_flag, add_trust_key_flag
from adapterfleet.common import extras
from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.common.metrics_config import MetricsConfig
from adapterfleet.common.reachability import unreachable
from adapterfleet.router.config import PORT as ROUTER_PORT
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.placement import PlacementConfig
from adapterfleet.store.config import ADDRESS as DEFAULT_STORE
from adapterfleet.store.config import PORT as STORE_PORT
from adapterfleet.store.config import REPLICATE_MODES, Limits, S3Config, StoreConfig
from adapterfleet.worker.config import PORT as WORKER_PORT
from adapterfleet.worker.config import WorkerConfig

MIB_SHIFT = 20  # bytes in the configs >> MIB_SHIFT: the flags' MB


def _store_addr(args) -> str:
    return getattr(args, "store", None) or DEFAULT_STORE  # --store, else $ADAPTERFLEET_STORE (parse_layered)


def _omp_threads(value: str) -> int:
    """``$OMP_NUM_THREADS`` as a thread count (its first level, "4,2" -> 4); 0 when unset or not a number."""
    head = value.split(",")[0].strip()
    return int(head) if head.isdigit() else 0


class _Version(argparse.Action):
    """``--version``: reads the installed version only when asked (importlib.metadata is not free)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import adapterfleet  # noqa: PLC0415

        print(f"{parser.prog} {adapterfleet.__version__}")
        parser.exit()


def _serve_flags(s: argparse.ArgumentParser, drain_s: float) -> None:
    """Flags every long-running service shares: logs, metrics, drain."""
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--log-format", default="json", choices=["json", "text"], help="json: one object per line")
    s.add_argument("--metrics-port", type=int, default=MetricsConfig.port,
                   help="serve Prometheus /metrics on this port (0: off)")
    s.add_argument("--metrics-host", default=MetricsConfig.host,
                   help="address /metrics binds (default: loopback only; 0.0.0.0 for a scraper on the network)")
    s.add_argument("--drain-seconds", type=float, default=drain_s,
                   help="on SIGTERM: stop taking new work, give in-flight requests this long, then exit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapterfleet", description="Store, ship and serve PEFT LoRA adapters.",
                                epilog="Every option can also be set as ADAPTERFLEET_<OPTION> in the environment or "
                                       "in the command's section of --config; flags win over both.")
    p.add_argument("--version", action=_Version, help="print the installed version and exit")
    p.add_argument("--config", help="YAML/JSON file: {store: {...}, worker: {...}, router: {...}} of option names "
                                    "(default $ADAPTERFLEET_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    store = sub.add_parser("store", help="the adapter store service").add_subparsers(dest="store_cmd", required=True)
    s = store.add_parser("serve", help="run the store (embedded default without --redis-url/--s3-endpoint)")
    s.add_argument("--host", default=StoreConfig.host)
    s.add_argument("--port", type=int, default=STORE_PORT)
    s.add_argument("--redis-url", help="redis://host:port/db; default: a private redis-server it starts itself")
    s.add_argument("--redis-prefix", default=StoreConfig.redis_prefix)
    s.add_argument("--s3-endpoint", help="S3 endpoint URL; default: blobs in --data-dir")
    s.add_argument("--bucket", default="adapterfleet")
    s.add_argument("--region", default=StoreConfig.region)
    s.add_argument("--s3-region", default=S3Config.region)
    s.add_argument("--s3-access-key-id", help="default: boto3's usual chain (AWS_ACCESS_KEY_ID, ~/.aws, ...)")
    s.add_argument("--s3-secret-access-key")
    s.add_argument("--s3-part-mb", type=int, default=S3Config.part_size >> MIB_SHIFT,
                   help="multipart part size (S3's minimum is 5)")
    s.add_argument("--s3-single-put-mb", type=int, default=S3Config.single_put_max >> MIB_SHIFT,
                   help="blobs from --s3-part-mb up to this size go up as one streamed PUT completed after "
                        "verification; larger ones as multipart (0: always multipart)")
    s.add_argument("--s3-presign-expiry", type=float, default=S3Config.presign_expiry_s, metavar="SECONDS",
                   help="fetches answer presigned GET URLs valid this long, and clients read blobs from S3 "
                        "directly (0: every byte streams through the store)")
    s.add_argument("--s3-presign-endpoint", metavar="URL",
                   help="the S3 endpoint as clients reach it, for presigned URLs (default: --s3-endpoint)")
    s.add_argument("--data-dir", default=StoreConfig.data_dir)
    s.add_argument("--chunk-size", type=int, default=StoreConfig.chunk_size)
    s.add_argument("--max-file-mb", type=int, default=Limits.max_file_bytes >> MIB_SHIFT)
    s.add_argument("--max-rank", type=int, default=Limits.max_rank)
    s.add_argument("--blob-cache-mb", type=int, default=StoreConfig.blob_cache_bytes >> MIB_SHIFT,
                   help="in-memory cache of small blobs (0: off)")
    s.add_argument("--blob-lookups", type=int, default=StoreConfig.blob_lookups,
                   help="threads checking which blobs exist for MissingBlobs (more: faster against a far S3; fewer: "
                        "less GIL contention with the store's event loop)")
    s.add_argument("--validator-processes", type=int, default=StoreConfig.validator_processes,
                   help="child processes validating pushed adapters (0: threads of the store's own process)")
    rollout.add_store_flags(s)
    s.add_argument("--primary", help="run a secondary region's store: replicate the primary store at this address "
                                     "(HOST:PORT) and forward writes to it; --region names this region")
    s.add_argument("--replicate", choices=REPLICATE_MODES,
                   help="with --primary: copy blobs into this region's bucket on first fetch (lazy, the default) or "
                        "as soon as a version is replicated (eager)")
    _serve_flags(s, StoreConfig.drain_s)
    s = store.add_parser("status", help="the store's role and, in a secondary region, its replication: primary, "
                                        "cursor, lag (events and seconds), blobs pending")
    s.add_argument("--store", help=f"store address (default $ADAPTERFLEET_STORE or {DEFAULT_STORE})")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    worker = sub.add_parser("worker", help="a worker: one base model, many adapters").add_subparsers(
        dest="worker_cmd", required=True)
    s = worker.add_parser("serve", help="serve a transformers causal LM directory with adapters from the store")
    s.add_argument("--host", default=WorkerConfig.host)
    s.add_argument("--port", type=int, default=WORKER_PORT)
    s.add_argument("--store", help=f"store address (default $ADAPTERFLEET_STORE or {DEFAULT_STORE})")
    s.add_argument("--base-model", required=True, help="directory written by save_pretrained")
    s.add_argument("--device", default=WorkerConfig.device, help="cpu | cuda | cuda:N")
    s.add_argument("--dtype", default=WorkerConfig.dtype, choices=["float32", "bfloat16", "float16"])
    s.add_argument("--region", default=WorkerConfig.region)
    s.add_argument("--max-slots", type=int, default=WorkerConfig.max_slots,
                   help="adapters active on the device at once")
    s.add_argument("--host-cache-mb", type=int, default=WorkerConfig.host_bytes >> MIB_SHIFT,
                   help="host-RAM tier budget")
    s.add_argument("--disk-cache-mb", type=int, default=WorkerConfig.disk_bytes >> MIB_SHIFT,
                   help="local-disk tier budget")
    s.add_argument("--disk-cache-dir", default=WorkerConfig.disk_dir)
    s.add_argument("--max-batch", type=int, default=WorkerConfig.max_batch)
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads of the engine (default $OMP_NUM_THREADS, else every CPU the process may run "
                        "on, capped by a cgroup CPU limit); every other thread of the worker runs torch on one thread")
    s.add_argument("--no-packed-weights", action="store_true",
                   help="run float32 CPU linear layers on their own weights instead of a copy prepacked for oneDNN "
                        "(saves the copy's memory, the size of the base model's linear weights; decode is slower)")
    s.add_argument("--no-native-kernel", action="store_true",
                   help="never build or use the native LoRA kernel (C++, compiled here on first start); decode steps "
                        "with many adapters then run torch's ops, and are slower")
    s.add_argument("--no-decode-attention", action="store_true",
                   help="decode steps attend through the model's own attention (torch's sdpa), not the native kernel's "
                        "(which reads only the positions each row attends to)")
    s.add_argument("--native-dir", default=WorkerConfig.native_dir,
                   help="where the native kernels (LoRA terms, decode attention) are built and kept (one build per "
                        "source, torch and CPU)")
    s.add_argument("--prefill-chunk-tokens", type=int, default=WorkerConfig.prefill_chunk_tokens,
                   help="while rows decode, longer prefills run in chunks of this many tokens (0: off)")
    s.add_argument("--no-fused-steps", action="store_true",
                   help="run a newcomer's prefill chunk as a forward of its own, not inside the next decode step's")
    s.add_argument("--advertise", default=WorkerConfig.advertise, help="address routers should use (default HOST:PORT)")
    s.add_argument("--no-direct-blobs", action="store_true",
                   help="always read adapter bytes through the store's stream, never from the presigned S3 URLs it "
                        "offers (for a worker that cannot reach S3; it falls back by itself, after a connect timeout)")
    add_trust_key_flag(s)
    _serve_flags(s, WorkerConfig.drain_s)

    router = sub.add_parser("router", help="the router: affinity, bounded load, failover").add_subparsers(
        dest="router_cmd", required=True)
    s = router.add_parser("serve", help="route Generate/Score to the workers that hold each adapter")
    s.add_argument("--host", default=RouterConfig.host)
    s.add_argument("--port", type=int, default=ROUTER_PORT)
    s.add_argument("--store", help=f"store address (default $ADAPTERFLEET_STORE or {DEFAULT_STORE})")
    s.add_argument("--redis-url", help="read the worker registry straight from the store's Redis")
    s.add_argument("--redis-prefix", default=RouterConfig.redis_prefix)
    s.add_argument("--region", default=RouterConfig.region)
    s.add_argument("--fallback-router", action="append", metavar="ADDR",
                   help="another region's router: what no healthy worker of this region can take goes there, once "
                        "(repeatable, tried in order; ADAPTERFLEET_FALLBACK_ROUTER=A,B)")
    s.add_argument("--eps", type=float, default=PlacementConfig.eps, help="bounded load: load <= (1+eps) x average")
    s.add_argument("--hot-rps-per-copy", type=float, default=PlacementConfig.hot_requests_per_copy,
                   help="add a copy above this rate per copy")
    s.add_argument("--max-copies", type=int, default=PlacementConfig.max_copies)
    s.add_argument("--route-ttl-seconds", type=float, default=RouterConfig.route_ttl_s,
                   help="how long direct (lookaside) clients may reuse a Route answer")
    s.add_argument("--version-report-seconds", type=float, default=RouterConfig.version_report_s,
                   help="send per-version request/error/latency figures to the store this often, for rollout "
                        "gates (0: off)")
    s.add_argument("--http-port", type=int, default=RouterConfig.http_port,
                   help="also serve an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
                        "/v1/models) on this port (0: any free port; default: off). It is PLAINTEXT HTTP (no "
                        "TLS, bearer tokens still checked): keep it on 127.0.0.1 or put a TLS proxy in front")
    s.add_argument("--http-host", default=RouterConfig.http_host,
                   help="address the plaintext HTTP API binds (default 127.0.0.1)")
    s.add_argument("--tokenizer", default=RouterConfig.tokenizer,
                   help="the base model's directory: its tokenizer's chat template serves /v1/chat/completions")
    _serve_flags(s, RouterConfig.drain_s)
    admin.add_parsers(worker, router)

    s = sub.add_parser("up", help="run a whole fleet on localhost: store, workers, router (Ctrl-C stops it)")
    s.add_argument("--workers", type=int, default=FleetConfig.workers)
    s.add_argument("--port", type=int, default=FleetConfig.port,
                   help="store port; workers take PORT+10.., the router PORT+20 (its HTTP API PORT+21)")
    s.add_argument("--base-model", default="", help="default: a small demo Llama built with a fixed seed")
    s.add_argument("--data-dir", default=DATA_DIR)
    s.add_argument("--max-slots", type=int, default=FleetConfig.max_slots)
    s.add_argument("--exit-after", type=float, help=argparse.SUPPRESS)
    s.add_argument("--json", action="store_true", help="once the fleet is ready, print its addresses as one JSON "
                                                       "object")

    s = sub.add_parser("demo", help="start a local fleet, train three toy adapters with PEFT, push them, route "
                                    "requests and print the answers and the affinity statistics")
    s.add_argument("--workers", type=int, default=FleetConfig.workers)
    s.add_argument("--port", type=int, default=FleetConfig.port,
                   help="store port; workers take PORT+10.., the router PORT+20 (its HTTP API PORT+21)")
    s.add_argument("--data-dir", default=DATA_DIR)
    s.add_argument("--steps", type=int, default=0, help="training steps per adapter (default: enough to learn)")
    s.add_argument("--requests", type=int, default=24, help="requests sent through the router")
    s.add_argument("--exit", action="store_true", help="stop the fleet when done (default: keep serving)")
    s.add_argument("--json", action="store_true", help="print one JSON object (answers, stats, addresses) on stdout "
                                                       "and the progress on stderr")

    for verb in ("generate", "score"):
        s = sub.add_parser(verb, help=f"{verb} through a worker or a router")
        target = s.add_mutually_exclusive_group(required=True)
        target.add_argument("--worker", help="worker address")
        target.add_argument("--router", help="router address")
        s.add_argument("--direct", action="store_true",
                       help="with --router: ask the router where to go, then stream straight to the worker "
                            "(lookaside routing; the workers' addresses must be reachable from here)")
        s.add_argument("--adapter", default="", help="ref; none: the base model")
        s.add_argument("--prompt-ids", help="comma-separated token ids")
        s.add_argument("--json", action="store_true")
        s.add_argument("--routing-key", default="")
        if verb == "generate":
            s.add_argument("--prompt", help="text (the base model directory must have a tokenizer)")
            s.add_argument("--max-new-tokens", type=int, default=16)
            s.add_argument("--temperature", type=float, default=0.0)
            s.add_argument("--top-k", type=int, default=0)
            s.add_argument("--top-p", type=float, default=1.0)
            s.add_argument("--seed", type=int)
            s.add_argument("--stop-ids", help="comma-separated; default: the model's eos")
            add_generation_flags(s)
        else:
            s.add_argument("--text", help="text to score instead of --prompt-ids")

    def store_flag(sp):
        sp.add_argument("--store", help=f"store address (default $ADAPTERFLEET_STORE or {DEFAULT_STORE})")

    s = sub.add_parser("push", help="push a PEFT adapter directory as a new version")
    s.add_argument("dir")
    s.add_argument("--name", required=True)
    s.add_argument("--alias", default="")
    s.add_argument("--parent", default="", help="canonical key of the version this was trained from")
    add_sign_key_flag(s)
    s.add_argument("--json", action="store_true")
    store_flag(s)

    s = sub.add_parser("pull", help="download a version into a directory (verified)")
    s.add_argument("ref")
    s.add_argument("dir")
    s.add_argument("--force", action="store_true",
                   help="write into a DIR that is not empty and not an earlier pull of this adapter (only the "
                        "adapter's own files are replaced; other files are kept)")
    s.add_argument("--json", action="store_true")
    store_flag(s)

    s = sub.add_parser("ls", help="list adapters, or the versions of one")
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true")
    store_flag(s)

    s = sub.add_parser("resolve", help="resolve a ref (name, name@3, name@alias, name@sha256:...)")
    s.add_argument("ref")
    s.add_argument("--routing-key", default="")
    s.add_argument("--json", action="store_true")
    store_flag(s)

    alias = sub.add_parser("alias", help="move or delete aliases").add_subparsers(dest="alias_cmd", required=True)
    s = alias.add_parser("set", help="point NAME@ALIAS at VERSION or weighted versions '3:90,4:10'")
    s.add_argument("name")
    s.add_argument("alias")
    s.add_argument("targets")
    s.add_argument("--expect", help="compare-and-set: the current targets ('3' or '3:90,4:10'), or 'none'")
    s.add_argument("--json", action="store_true")
    store_flag(s)
    s = alias.add_parser("delete")
    s.add_argument("name")
    s.add_argument("alias")
    s.add_argument("--expect")
    s.add_argument("--json", action="store_true")
    store_flag(s)

    s = sub.add_parser("yank", help="make a version unresolvable by number or alias (still fetchable by digest)")
    s.add_argument("name")
    s.add_argument("version", type=int)
    s.add_argument("--force", action="store_true", help="even when an alias points at it")
    s.add_argument("--json", action="store_true")
    store_flag(s)

    s = sub.add_parser("gc", help="delete blobs no version refers to")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--min-age", type=float, help="seconds; default: the store's grace period")
    s.add_argument("--json", action="store_true")
    store_flag(s)

    s = sub.add_parser("watch", help="print store events as JSON lines")
    s.add_argument("--cursor", default="", help="'0' for all history, an event id to resume after")
    s.add_argument("--name", default="")
    s.add_argument("--json", action="store_true", help="the output is JSON lines with or without it")
    store_flag(s)
    rollout.add_parsers(sub, f"store address (default $ADAPTERFLEET_STORE or {DEFAULT_STORE})")
    auth_cmd.add_parsers(sub)
    add_revoke_parser(p, store_flag)
    add_tls_flags(p)
    add_auth_flags(p)
    return p


def require_extra(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Before the command's own flags are checked: exit 1, naming the pip install, when its extra is missing."""
    words = [args.command, getattr(args, f"{args.command}_cmd", None)]
    try:
        extras.require(" ".join(["adapterfleet", *filter(None, words)]))
        if getattr(args, "sign_key", None) or getattr(args, "trust_key", None):
            extras.require("adapterfleet.signing")  # signed adapters: push --sign-key, worker serve --trust-key
    except extras.MissingExtra as err:
        parser.exit(1, f"{err}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv or os.environ.get("ADAPTERFLEET_JSON", "").strip().lower() in ("1", "true", "yes", "on")
    with report.usage_errors(as_json):
        args = parse_layered(build_parser(), argv, os.environ, check=require_extra)
    if getattr(args, "threads", 0) is None:  # `worker serve` without --threads: as many as OpenMP was told to use
        args.threads = _omp_threads(os.environ.get("OMP_NUM_THREADS", ""))
    as_json = bool(getattr(args, "json", False))
    from adapterfleet.cli import commands  # noqa: PLC0415 - keep `--help` instant

    try:
        code = commands.dispatch(args, _store_addr(args))
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `adapterfleet watch | head -1`: the reader is gone
        return report.closed_pipe()
    except AdapterFleetError as err:
        report.error(err.code, _reachable(args, err) or err.message, as_json)
        return 1
    except OSError as err:  # a local file: missing, not writable, ...
        if getattr(args, f"{args.command}_cmd", None) == "serve":
            raise  # a service's log keeps the whole traceback
        report.error(*report.os_error(err), as_json)
        return 1
    except KeyboardInterrupt:
        return 130


def _reachable(args, err: AdapterFleetError) -> str | None:
    """For UNAVAILABLE because nothing answers at the address: one line naming it, instead of gRPC's text."""
    from adapterfleet.cli import commands  # noqa: PLC0415 - imported by now

    if err.code != "UNAVAILABLE":
        return None
    if args.command in ("generate", "score"):
        role = "worker" if args.worker else "router"
    elif args.command in ("worker", "router") and getattr(args, f"{args.command}_cmd") != "serve":
        role = args.command
    elif args.command in (*commands.COMMANDS, "rollout") or getattr(args, "store_cmd", None) == "status":
        # the store's clients
        role = "store"
    else:
        return None
    address = _store_addr(args) if role == "store" else getattr(args, role)
    return unreachable(err.message, address, role, f"--{role} or ADAPTERFLEET_{role.upper()}")


if __name__ == "__main__":
    sys.exit(main())
