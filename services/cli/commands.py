"""The CLI's commands: each turns parsed flags into one client or server call and prints the result."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

from adapterfleet.store.manifest import Manifest
from adapterfleet.store.targets import Targets, encode, parse


def _out(obj) -> None:
    print(json.dumps(obj, sort_keys=True))


def parse_expect(text: str | None) -> Targets | str | None:
    """``--expect``: unset -> "any" (unconditional); 'none' -> the alias must not exist; else its exact targets."""
    if text is None:
        return "any"
    return None if text.lower() in ("none", "absent", "") else parse(text)


def manifest_json(m: Manifest) -> dict:
    return {"name": m.name, "version": m.version, "digest": m.digest, "key": str(m.key), "rank": m.rank,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in m.files],
            "base_model": m.base_model.name_or_path, "parent": m.parent, "yanked": m.yanked,
            "created_at": m.created_at, "signed": bool(m.signature)}


@contextmanager
def progress_bar(enabled: bool, total: int, label: str):
    """A rich progress bar on a terminal; a no-op callback otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn  # noqa: PLC0415 - only with a TTY

    with Progress("[bold]" + label, BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda n: bar.advance(task, n)


def dispatch(args, store_addr: str) -> int:
    if args.command == "store" and args.store_cmd == "status":
        from adapterfleet.cli.store_status import run_status  # noqa: PLC0415

        return run_status(args, store_addr)
    if args.command == "store":
        from adapterfleet.cli.store_serve import run_store  # noqa: PLC0415

        return run_store(args)
    if args.command in ("worker", "router") and getattr(args, f"{args.command}_cmd") != "serve":
        from adapterfleet.cli.admin import run  # noqa: PLC0415

        return run(args)
    if args.command == "worker":
        from adapterfleet.cli.worker_serve import run_worker  # noqa: PLC0415 - imports torch

        return run_worker(args, store_addr)
    if args.command == "up":
        from adapterfleet.cli.up import run_up  # noqa: PLC0415

        return run_up(args)
    if args.command == "demo":
        from adapterfleet.cli.demo import run_demo  # noqa: PLC0415

        return run_demo(args)
    if args.command == "router":
        from adapterfleet.cli.router_serve import run_router  # noqa: PLC0415

        return run_router(args, store_addr)
    if args.command == "token" and args.token_cmd == "revoke":
        from adapterfleet.cli.auth_flags import run_revoke  # noqa: PLC0415

        return run_revoke(args, store_addr)
    if args.command == "rollout":
        from adapterfleet.cli.rollout import run as run_rollout  # noqa: PLC0415

        return run_rollout(args, store_addr)
    if args.command in ("auth", "token"):
        from adapterfleet.cli.auth_cmd import run as run_auth  # noqa: PLC0415

        return run_auth(args)
    if args.command in ("generate", "score"):
        from adapterfleet.cli.inference import run_inference  # noqa: PLC0415

        return run_inference(args)
    from adapterfleet.cli.flags import client_security  # noqa: PLC0415
    from adapterfleet.store.client import StoreClient  # noqa: PLC0415

    with StoreClient(store_addr, security=client_security(args)) as client:
        return COMMANDS[args.command](args, client)


def cmd_push(args, client) -> int:
    from adapterfleet.store.client import adapter_files  # noqa: PLC0415 - loaded with the client, not for --help

    total = sum(p.stat().st_size for p in adapter_files(Path(args.dir)))
    with progress_bar(not args.json, total, f"push {args.name}") as advance:
        out = client.push_dir(args.dir, args.name, alias=args.alias, parent=args.parent, progress=advance,
                              sign_key=args.sign_key)
    if args.json:
        _out({**manifest_json(out.manifest), "created": out.created, "bytes_sent": out.bytes_sent,
              "bytes_deduplicated": out.bytes_deduplicated})
    else:
        state = "pushed" if out.created else "already stored as"
        print(f"{state} {out.manifest.name}@{out.manifest.version} {out.manifest.digest}"
              + (f" (alias {args.alias})" if args.alias else ""))
    return 0


def cmd_pull(args, client) -> int:
    resolved = client.resolve(args.ref)
    with progress_bar(not args.json, resolved.manifest.total_size, f"pull {args.ref}") as advance:
        m = client.pull(str(resolved.manifest.key), args.dir, progress=advance, force=args.force)
    if args.json:
        _out({**manifest_json(m), "dir": args.dir})
    else:
        print(f"pulled {m.name}@{m.version} {m.digest} into {args.dir}")
    return 0


def cmd_resolve(args, client) -> int:
    r = client.resolve(args.ref, args.routing_key)
    if args.json:
        _out({**manifest_json(r.manifest), "alias": r.alias,
              "alias_targets": [{"version": v, "weight": w} for v, w in r.alias_targets],
              "targets": [{"version": t.version, "weight": t.weight, "key": t.key} for t in r.targets]})
    else:
        print(f"{args.ref} -> {r.manifest.name}@{r.manifest.version} {r.manifest.digest}")
    return 0


def cmd_ls(args, client) -> int:
    if args.name:
        versions, aliases = client.list_versions(args.name)
        if args.json:
            _out({"name": args.name, "versions": [manifest_json(m) for m in versions],
                  "aliases": {a: [{"version": v, "weight": w} for v, w in t] for a, t in aliases.items()}})
            return 0
        for m in versions:
            print(f"{m.name}@{m.version}\t{m.digest}\t{m.total_size} B" + ("\tyanked" if m.yanked else ""))
        for a, t in sorted(aliases.items()):
            print(f"{args.name}@{a}\t-> {encode(t)}")
        return 0
    adapters = client.list_adapters()
    if args.json:
        _out({"adapters": [{"name": a.name, "latest_version": a.latest_version, "version_count": a.version_count,
                            "aliases": {x: [{"version": v, "weight": w} for v, w in t] for x, t in a.aliases.items()}}
                           for a in adapters]})
        return 0
    for a in adapters:
        aliases = " ".join(f"{x}->{encode(t)}" for x, t in sorted(a.aliases.items()))
        print(f"{a.name}\tlatest {a.latest_version}\t{a.version_count} versions\t{aliases}")
    return 0


def cmd_alias(args, client) -> int:
    expect = parse_expect(args.expect)
    if args.alias_cmd == "set":
        targets = parse(args.targets)
        client.set_alias(args.name, args.alias, targets, expect)
        if args.json:
            _out({"name": args.name, "alias": args.alias,
                  "targets": [{"version": v, "weight": w} for v, w in targets]})
        else:
            print(f"{args.name}@{args.alias} -> {encode(targets)}")
    else:
        client.delete_alias(args.name, args.alias, expect)
        if args.json:
            _out({"name": args.name, "alias": args.alias, "deleted": True})
        else:
            print(f"deleted {args.name}@{args.alias}")
    return 0


def cmd_yank(args, client) -> int:
    m = client.yank(args.name, args.version, args.force)
    if args.json:
        _out(manifest_json(m))
    else:
        print(f"yanked {m.name}@{m.version} {m.digest} (still fetchable as {m.key})")
    return 0


def cmd_gc(args, client) -> int:
    r = client.collect_garbage(args.dry_run, args.min_age)
    report = {"deleted": list(r.deleted), "bytes_freed": r.bytes_freed, "kept_referenced": r.kept_referenced,
              "kept_leased": r.kept_leased, "aborted_uploads": r.aborted_uploads, "dry_run": args.dry_run}
    if args.json:
        _out(report)
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(r.deleted)} blobs ({r.bytes_freed} B); kept {r.kept_referenced} referenced, "
              f"{r.kept_leased} leased; aborted {r.aborted_uploads} stale uploads")
    return 0


def cmd_watch(args, client) -> int:
    for e in client.watch(args.cursor, args.name):
        _out({"cursor": e.cursor, "type": e.type, "name": e.name, "version": e.version, "digest": e.digest,
              "alias": e.alias, "targets": [{"version": v, "weight": w} for v, w in e.targets], "time": e.time})
        sys.stdout.flush()
    return 0


COMMANDS = {"push": cmd_push, "pull": cmd_pull, "resolve": cmd_resolve, "ls": cmd_ls, "alias": cmd_alias,
            "yank": cmd_yank, "gc": cmd_gc, "watch": cmd_watch}
