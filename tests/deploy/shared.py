"""What the compose and the Kubernetes checks share: where the files are, YAML, the test extra's tools, paths and
addresses, and the harness that proves a check fails on a broken copy.

A check is a function (files, cli) -> problems: the tests assert it finds none in the real files, and
assert_catches asserts it finds the one a mutation put into a copy."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def yaml_document(text: str) -> dict:
    """One YAML document; an empty one reads as {}."""
    return yaml.safe_load(text) or {}


def yaml_documents(text: str) -> list[dict]:
    """Every non-empty document of a `---`-separated stream (what `kubectl kustomize` prints)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def tool(name: str, package: str) -> str:
    """The console script ``name`` beside this Python (where the test extra installs ``package``), else on PATH;
    skips the test when there is neither."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} beside {sys.executable} or on PATH: install the test extra ({package})")
    return found


def under(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def split_addr(addr: str) -> tuple[str, int]:
    """Split "host:port" into (host, port); a missing port reads as 0."""
    host, _, port = addr.rpartition(":")
    return host, int(port or 0)


def check_id(check) -> str:
    """A test id for a check: `schema` for schema_problems."""
    return check.__name__.removesuffix("_problems")


def assert_catches(what: str, check, files, mutate, expect: str, cli) -> None:
    """``check`` finds no problem mentioning ``expect`` in ``files`` (a copy of the real ones), and finds one once
    ``mutate`` has broken them."""
    assert not any(expect in p for p in check(files, cli)), f"{what}: the unbroken copy already has this problem"
    mutate(files)
    problems = check(files, cli)
    assert any(expect in p for p in problems), f"{what}: {check.__name__} did not notice; said {problems}"
