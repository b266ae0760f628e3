"""For the deploy-file tests: the CLI's own parser and its layered settings (flags > ADAPTERFLEET_* environment >
--config file), so compose and Kubernetes files stay in step with the code. argparse's exits become CliError
with argparse's own message."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io

from adapterfleet.cli.flags import parse_layered
from adapterfleet.cli.main import build_parser


class CliError(ValueError):
    pass


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public way to reach a subparser
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _run(argv: list[str], parse):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse()
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise CliError(f"`adapterfleet {' '.join(argv)}`: {lines[-1] if lines else 'exited'}") from None


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    """A shared parser for reading only (parse_layered changes the parser it is given: it gets a fresh one)."""
    return build_parser()


def _spelt_out(argv: list[str]) -> None:
    """argparse takes `--max-slot` for `--max-slots`; a deploy file must not, or a new flag breaks it."""
    parser, known = _parser(), set()
    for word in [None, *argv]:
        if word is not None:
            if word not in _subparsers(parser):
                continue
            parser = _subparsers(parser)[word]
        known |= {opt for action in parser._actions for opt in action.option_strings}
    for word in argv:
        flag = word.split("=", 1)[0]
        if word.startswith("--") and flag not in known:
            raise CliError(f"`adapterfleet {' '.join(argv)}`: {flag} is not a flag of this command "
                           "(abbreviated or misspelt)")


def serve_section(args: argparse.Namespace | None) -> str:
    """The SECTION ("store", "worker" or "router") when ``args`` run `adapterfleet SECTION serve`, else ""."""
    serving = args is not None and getattr(args, f"{args.command}_cmd", None) == "serve"
    return args.command if serving else ""


class Cli:
    Error = CliError

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """``build_parser().parse_args(argv)``: flags alone."""
        args = _run(argv, lambda: _parser().parse_args(argv))
        _spelt_out(argv)
        return args

    def layered(self, argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
        """What `main` does: flags > ADAPTERFLEET_* in ``environ`` > the --config file's section > defaults."""
        args = _run(argv, lambda: parse_layered(build_parser(), argv, environ))
        _spelt_out(argv)
        return args

    def serve_flags(self, section: str) -> dict[str, argparse.Action]:
        """The long flags of `adapterfleet SECTION serve`, without dashes: {"max-slots": <Action>, ...}."""
        serve = _subparsers(_subparsers(_parser())[section])["serve"]
        return {opt[2:]: action for action in serve._actions for opt in action.option_strings
                if opt.startswith("--") and opt != "--help"}

    @staticmethod
    def module_problems(module: str, args: list[str]) -> list[str]:
        """`python -m MODULE ARGS` (what init jobs run): MODULE exists and its build_parser() accepts ARGS."""
        spec = importlib.util.find_spec(module)
        if spec is None:
            return [f"no module {module}"]
        name = f"{module}.__main__" if spec.submodule_search_locations is not None else module
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                importlib.import_module(name).build_parser().parse_args(args)
        except SystemExit:
            return [f"`python -m {module} {' '.join(args)}` does not parse"]
        return []
