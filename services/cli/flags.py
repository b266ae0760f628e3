"""Where a service's settings come from: command-line flags, then ``ADAPTERFLEET_<FLAG>`` environment variables,
then the command's section of a ``--config`` file (YAML or JSON), then the built-in defaults.

    # adapterfleet --config fleet.yaml worker serve --port 50062
    worker:
      base-model: /models/llama
      max-slots: 16
    router:
      eps: 0.25

Every option takes part, the addresses of client commands too (``ADAPTERFLEET_ROUTER``, ``ADAPTERFLEET_WORKER``,
``ADAPTERFLEET_STORE``). Of options that exclude each other (``generate --worker | --router``), a flag on the
command line wins and the others' settings are ignored; two of them set only in the environment or the file are
refused as ambiguous.

Only ``services/cli/main.py`` calls this, with the process environment; nothing below it reads the environment.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from adapterfleet.common.metrics_config import MetricsConfig

ENV_PREFIX = "ADAPTERFLEET_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def parse_layered(parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str],
                  check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None):
    """``check(parser, args)``, when given, runs once the command is known and before its settings are read."""
    required = [a for a in _all_options(parser) if a.required]
    groups = [g for g in _all_groups(parser) if g.required]
    _require(required, groups, False)  # the environment or the file may supply these
    first = parser.parse_args(argv)  # flags alone: finds the command, rejects unknown flags
    _require(required, groups, True)
    if check is not None:
        check(parser, first)
    path = first.config or environ.get(f"{ENV_PREFIX}CONFIG")
    section, leaf = _command(parser, first)
    from_file = _load_section(parser, path, section, leaf) if path else {}
    defaults, origins = {}, {}
    flagged = _given_in_groups(leaf, first)
    for action in _options(leaf):
        if action.dest in flagged:  # another option of its exclusive group is on the command line
            continue
        value, origin = from_file.get(action.dest), f"{section}.{action.dest} in {path}"
        env = environ.get(ENV_PREFIX + action.dest.upper())
        if env is not None:
            value, origin = env, ENV_PREFIX + action.dest.upper()
        if value is None:
            continue
        defaults[action.dest] = _convert(parser, action, value, origin)
        origins[action.dest] = origin
        action.required = False  # satisfied by the environment or the file; a flag still wins
    for group in leaf._mutually_exclusive_groups:  # noqa: SLF001 - argparse has no public API to walk parsers
        supplied = [a for a in group._group_actions if a.dest in defaults]  # noqa: SLF001 - as above
        if len(supplied) > 1:
            leaf.error(f"{' and '.join(origins[a.dest] for a in supplied)} are both set, but "
                         f"{' and '.join(a.option_strings[0] for a in supplied)} exclude each other: give one of "
                         "them on the command line, or unset the other")
        if supplied:
            group.required = False  # argparse counts only flags against a required group
    leaf.set_defaults(**defaults)
    return parser.parse_args(argv)


def _require(actions: list[argparse.Action], groups: list[argparse._MutuallyExclusiveGroup], value: bool) -> None:
    for action in actions:
        action.required = value
    for group in groups:
        group.required = value


def _given_in_groups(leaf: argparse.ArgumentParser, args) -> set[str]:
    """Dests of exclusive-group members whose group has a member set on the command line (not that member)."""
    out: set[str] = set()
    for group in leaf._mutually_exclusive_groups:  # noqa: SLF001 - argparse has no public API to walk parsers
        members = group._group_actions  # noqa: SLF001 - as above
        given = {a.dest for a in members if getattr(args, a.dest, a.default) != a.default}
        if given:
            out |= {a.dest for a in members} - given
    return out


def _all_groups(parser: argparse.ArgumentParser) -> list[argparse._MutuallyExclusiveGroup]:
    out = list(parser._mutually_exclusive_groups)  # noqa: SLF001 - argparse has no public API to walk parsers
    for action in parser._actions:  # noqa: SLF001 - as above
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 - as above
            for sub in action.choices.values():
                out += _all_groups(sub)
    return out


def metrics_config(args) -> MetricsConfig:
    return MetricsConfig(port=args.metrics_port, host=args.metrics_host)


def _command(parser: argparse.ArgumentParser, args) -> tuple[str, argparse.ArgumentParser]:
    """(top-level command name, the innermost subparser that parsed the command's own flags)."""
    section, current = "", parser
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001 - argparse has no public API to walk parsers
        if not subs:
            return section, current
        name = getattr(args, subs[0].dest)
        section = section or name
        current = subs[0].choices[name]


def _all_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public API to walk parsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 - argparse has no public API to walk parsers
            for sub in action.choices.values():
                out += _all_options(sub)
        elif action.option_strings:
            out.append(action)
    return out


def _options(leaf: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in leaf._actions if a.option_strings and a.dest not in ("help", "config")  # noqa: SLF001 - argparse has no public API to walk parsers
            and not isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001 - argparse has no public API to walk parsers


def _load_section(parser, path: str, section: str, leaf) -> dict:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as err:
        parser.error(f"cannot read the config file {path}: {err.strerror}")
    kind = "JSON" if file.suffix == ".json" else "YAML"
    try:
        if kind == "JSON":
            data = json.loads(text)
        else:
            import yaml  # noqa: PLC0415 - only when a YAML file is given

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - json.JSONDecodeError or yaml.YAMLError
        parser.error(f"{path} is not valid {kind}: {err}")
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        parser.error(f"{path} must map command names (store, worker, router, ...) to settings")
    commands = set(_choices(parser))
    unknown = sorted(set(data) - commands)
    if unknown:
        parser.error(f"{path}: unknown section(s) {unknown}; sections are command names: {sorted(commands)}")
    settings = {str(k).replace("-", "_"): v for k, v in (data.get(section) or {}).items()}
    known = {a.dest for a in _options(leaf)}
    bad = sorted(set(settings) - known)
    if bad:
        parser.error(f"{path}: unknown setting(s) {bad} in section {section!r}; "
                     f"known: {sorted(k.replace('_', '-') for k in known)}")
    return settings


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001 - argparse has no public API to walk parsers
    return list(subs[0].choices) if subs else []


def _convert(parser, action: argparse.Action, value, origin: str):
    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001 - argparse has no public API to walk parsers
        text = str(value).strip().lower()
        if text not in _TRUE | _FALSE:
            parser.error(f"{origin}: expected true or false, got {value!r}")
        return text in _TRUE
    if isinstance(value, (dict, list)):
        parser.error(f"{origin}: expected a single value, got {value!r}")
    try:
        out = action.type(value) if callable(action.type) else str(value)
    except (TypeError, ValueError):
        parser.error(f"{origin}: {value!r} is not a valid {getattr(action.type, '__name__', 'value')}")
    if action.choices is not None and out not in action.choices:
        parser.error(f"{origin}: {out!r} is not one of {list(action.choices)}")
    return out


# --- security flags -----------------------------------------------------------------------------------------------
NO_TLS_FLAGS = {("auth",), ("token", "create"), ("up",), ("demo",)}  # commands that make their own material
INSECURE_REFUSAL = ("refusing to serve without TLS or authentication: pass --tls-cert/--tls-key/--tls-ca (and "
                    "--auth-public-key), e.g. the files `adapterfleet auth init DIR` writes, or --insecure to serve "
                    "plaintext on purpose")


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca/--tls-cert/--tls-key`` on every command that makes or serves calls (``ADAPTERFLEET_TLS_CA`` and
    so on through the usual layering). A serving command uses the same files for its port and for its own calls."""
    for path, leaf in leaves(parser):
        if path[:1] in NO_TLS_FLAGS or path[:2] in NO_TLS_FLAGS:  # `token revoke` calls the store: it has them
            continue
        serving = path[-1:] == ("serve",)
        g = leaf.add_argument_group("TLS")
        g.add_argument("--tls-ca", help="CA certificate (PEM): " + (
            "clients must present a certificate it signed (mTLS), and the services this one calls must too"
            if serving else "turns TLS on; the server's certificate must chain to it"))
        g.add_argument("--tls-cert", help="certificate chain (PEM) " + (
            "this service serves and presents as a client; reloaded when the file changes" if serving
            else "presented as the client certificate (mTLS)"))
        g.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
        g.add_argument("--tls-server-name", help="check the certificates of the services called for this name "
                                                 "instead of the address's host (workers dialed by pod IP)")
        if serving:
            g.add_argument("--insecure", action="store_true",
                           help="serve plaintext without authentication (refused without this flag)")
            g.add_argument("--reflection", action="store_true", help="serve gRPC reflection (default: off)")


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(subcommand path, parser) of every leaf command below ``parser``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001 - argparse has no public API to walk parsers
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaves(sub, (*path, name))


def _path(value) -> Path | None:
    return Path(value) if value else None


def client_security(args):
    """A client command's (or a service's outbound) ClientSecurity from --tls-* and --token."""
    from adapterfleet.common.security_config import ClientSecurity  # noqa: PLC0415 - keep `--help` instant

    return ClientSecurity(tls_ca=_path(getattr(args, "tls_ca", None)), tls_cert=_path(getattr(args, "tls_cert", None)),
                          tls_key=_path(getattr(args, "tls_key", None)), token=getattr(args, "token", None) or None,
                          server_name=getattr(args, "tls_server_name", None) or None)


def server_tls(args):
    """A serving command's ServerTLS (None: plaintext), after the secure-by-default check: no TLS and no
    --auth-public-key is refused unless --insecure."""
    from adapterfleet.common.errors import FailedPrecondition, InvalidArgument  # noqa: PLC0415 - as above
    from adapterfleet.common.security_config import ServerTLS  # noqa: PLC0415 - as above

    cert, key, ca = _path(args.tls_cert), _path(args.tls_key), _path(args.tls_ca)
    if (cert is None) != (key is None):
        raise InvalidArgument("--tls-cert and --tls-key go together: give both (or neither, with --insecure)")
    if cert is None:
        if ca is not None:
            raise InvalidArgument("--tls-ca needs --tls-cert and --tls-key: the service's own certificate and key")
        if not getattr(args, "auth_public_key", None) and not args.insecure:
            raise FailedPrecondition(INSECURE_REFUSAL)
        return None
    assert key is not None
    return ServerTLS(cert=cert, key=key, ca=ca)


def service_security(args):
    """(ServerTLS or None, the ClientSecurity of the service's own calls): the same certificate both ways (as
    `auth init` makes it) and the service's --token."""
    tls = server_tls(args)
    if tls is None or tls.ca is None:  # no CA to check the others' certificates by: only the token goes out
        return tls, client_security(argparse.Namespace(token=getattr(args, "token", None)))
    return tls, tls.client(getattr(args, "token", None) or None, getattr(args, "tls_server_name", None) or None)
