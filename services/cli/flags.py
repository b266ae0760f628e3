"""Where a service's settings come from: command-line flags, then ``ADAPTERFLEET_<FLAG>`` environment variables,
then the command's section of a ``--config`` file (YAML or JSON), then the built-in defaults.

    # adapterfleet --config fleet.yaml worker serve --port 50062
    worker:
      base-model: /models/llama
      max-slots: 16
    router:
      eps: 0.25

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
    for action in required:  # the environment or the file may supply these
        action.required = False
    first = parser.parse_args(argv)  # flags alone: finds the command, rejects unknown flags
    for action in required:
        action.required = True
    if check is not None:
        check(parser, first)
    path = first.config or environ.get(f"{ENV_PREFIX}CONFIG")
    section, leaf = _command(parser, first)
    from_file = _load_section(parser, path, section, leaf) if path else {}
    defaults = {}
    for action in _options(leaf):
        value, origin = from_file.get(action.dest), f"{section}.{action.dest} in {path}"
        env = environ.get(ENV_PREFIX + action.dest.upper())
        if env is not None:
            value, origin = env, ENV_PREFIX + action.dest.upper()
        if value is None:
            continue
        defaults[action.dest] = _convert(parser, action, value, origin)
        action.required = False  # satisfied by the environment or the file; a flag still wins
    leaf.set_defaults(**defaults)
    return parser.parse_args(argv)


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
