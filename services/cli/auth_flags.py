"""Token flags: ``--token`` on every command that makes calls (``ADAPTERFLEET_TOKEN``; a serving command uses it
for its own calls), ``--auth-public-key`` (repeatable) and the per-tenant limits on every ``serve``, and
``adapterfleet token revoke ID``."""

from __future__ import annotations

import argparse
import json
import time

from adapterfleet.cli.flags import leaves

NO_TOKEN_FLAG = {("auth",), ("up",), ("demo",), ("token", "create")}  # they make their own material, or call nobody


class _AppendPaths(argparse.Action):
    """Repeatable; values from the environment or a config file (a string, comma-separated) are replaced by the
    command line's, not appended to."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(items if isinstance(items, list) else []), values])


def add_auth_flags(parser: argparse.ArgumentParser) -> None:
    for path, leaf in leaves(parser):
        if path[:1] in NO_TOKEN_FLAG or path[:2] in NO_TOKEN_FLAG:
            continue
        serving = path[-1:] == ("serve",)
        g = leaf.add_argument_group("tokens")
        g.add_argument("--token", help="bearer token sent on every call" + (" this service makes (a worker's needs "
                                                                             "the read and worker scopes)"
                                                                             if serving else "")
                       + "; default $ADAPTERFLEET_TOKEN")
        if not serving:
            continue
        g.add_argument("--auth-public-key", action=_AppendPaths, metavar="PEM",
                       help="require a token signed by this issuer key on every call (repeat while keys rotate: "
                            "old and new); without it this service authenticates nobody")
        g.add_argument("--tenant-rps", type=float, default=0.0, metavar="N",
                       help="calls per second per tenant (token bucket; 0: unlimited); over it: RESOURCE_EXHAUSTED "
                            "with a retry-after-ms trailer")
        g.add_argument("--tenant-burst", type=float, default=0.0, metavar="N",
                       help="the bucket's size (0: --tenant-rps, at least 1)")
        g.add_argument("--tenant-streams", type=int, default=0, metavar="N",
                       help="streaming calls open at once per tenant (0: unlimited)")
        if path[:1] == ("store",):
            g.add_argument("--tenant-max-push-mb", type=float, default=0.0, metavar="MB",
                           help="the largest push a tenant may make (0: the store's own limits only)")
            g.add_argument("--tenant-pushes-per-min", type=float, default=0.0, metavar="N",
                           help="pushes per minute per tenant (0: unlimited)")


def auth_config(args):
    """A serving command's AuthConfig from its flags."""
    from pathlib import Path  # noqa: PLC0415 - keep `--help` instant

    from adapterfleet.common.auth_config import AuthConfig, TenantLimits  # noqa: PLC0415 - as above

    raw = getattr(args, "auth_public_key", None) or []
    keys = [k for item in ([raw] if isinstance(raw, str) else raw) for k in str(item).split(",") if k.strip()]
    limits = TenantLimits(requests_per_s=args.tenant_rps, burst=args.tenant_burst, max_streams=args.tenant_streams,
                          max_push_bytes=int(getattr(args, "tenant_max_push_mb", 0.0) * (1 << 20)),
                          pushes_per_min=getattr(args, "tenant_pushes_per_min", 0.0))
    return AuthConfig(public_keys=tuple(Path(k.strip()) for k in keys), limits=limits)


def add_revoke_parser(parser: argparse.ArgumentParser, store_flag) -> None:
    """``adapterfleet token revoke ID`` beside ``token create``."""
    token = next(sub for path, sub in _subcommands(parser) if path == ("token",))
    s = token.add_parser("revoke", help="refuse a token id from now on, everywhere (an admin token for tenant '*')")
    s.add_argument("id", help="the token's id (`token create --json` printed it)")
    s.add_argument("--expires", type=float, default=0.0, metavar="UNIX_SECONDS",
                   help="the token's expiry, after which the revocation may be forgotten (default: kept a year)")
    s.add_argument("--json", action="store_true")
    store_flag(s)


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:  # noqa: SLF001 - argparse has no public API to walk parsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 - as above
            for name, sub in action.choices.items():
                for inner in sub._actions:  # noqa: SLF001 - as above
                    if isinstance(inner, argparse._SubParsersAction):  # noqa: SLF001 - as above
                        yield (*path, name), inner
                yield from _subcommands(sub, (*path, name))


def run_revoke(args, store_addr: str) -> int:
    from adapterfleet.cli.flags import client_security  # noqa: PLC0415 - keep `--help` instant
    from adapterfleet.store.client import StoreClient  # noqa: PLC0415 - as above

    with StoreClient(store_addr, security=client_security(args)) as client:
        cursor = client.revoke_token(args.id, args.expires)
    if args.json:
        print(json.dumps({"id": args.id, "revoked": True, "cursor": cursor, "time": time.time()}))
    else:
        print(f"revoked token {args.id}: the store refuses it now; routers and workers within a second or so")
    return 0
