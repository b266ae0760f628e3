"""Clients never import servers (STYLE 14), and nothing imports the repository's folders as top-level packages.

Every module of the installed `adapterfleet` package is read as source (its folders as pyproject.toml maps them) and
every import in it is collected, at any depth: module level, inside functions (lazy imports), under TYPE_CHECKING,
and ``importlib.import_module("...")`` with a literal name. A client module (what a user installs the SDK or the
client CLI for) must not import a server module; wire types and conversions sit in modules both sides import.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CLIENT = ["adapterfleet.sdk", "adapterfleet.sdk.*",
          *(f"adapterfleet.store.{m}" for m in (
              "client", "aio_client", "proto_convert", "targets", "refs", "manifest", "events", "resolved", "workers",
              "listing", "base_model", "safetensors_header", "strict_json", "adapter_config", "validation",
              "peft_keys", "direct_fetch", "blob_urls", "byte_lru", "small_blobs", "rollout_figures",
              "rollout_record")),
          *(f"adapterfleet.common.{m}" for m in ("channel", "errors", "grpc_errors", "interceptors", "tiers")),
          "adapterfleet.cli.commands", "adapterfleet.cli.inference"]
SERVER = ["adapterfleet.*.server", "adapterfleet.*.servicer", "adapterfleet.*_servicer", "adapterfleet.*.service",
          "adapterfleet.store.index", "adapterfleet.store.push", "adapterfleet.store.registry",
          "adapterfleet.store.blobs", "adapterfleet.store.blobs.*", "adapterfleet.store.scripts",
          "adapterfleet.worker", "adapterfleet.worker.*", "adapterfleet.router", "adapterfleet.router.*",
          "adapterfleet.common.server",
          *(f"adapterfleet.store.rollout_{m}" for m in ("redis", "controller", "warm", "regions", "assembly"))]
# The CLI's launchers (`adapterfleet store serve`, `worker serve`, `up`, `demo`, ...): assemblies that the client
# commands hand over to, behind the extras they need. The transitive check does not follow imports through them.
LAUNCHERS = ["adapterfleet.cli.*"]
REPO_FOLDERS = {"store", "services", "protos"}  # folders of this repository, never import names


def package_modules() -> dict[str, Path]:
    """module name -> source file, for every module the distribution installs."""
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in dirs.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            out[".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))] = path
    return out


MODULES = package_modules()


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported name) for every import in the file; ``from X import Y`` gives X.Y when that is a module."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def layering_violations(modules: dict[str, Path]) -> list[str]:
    bad = []
    for module, path in sorted(modules.items()):
        if not matches(module, CLIENT) or matches(module, SERVER):
            continue
        for line, name in imports(path, module):
            if name in MODULES and matches(name, SERVER):
                bad.append(f"{shown(path)}:{line}: client module {module} imports server module {name}")
    return bad


def reached_servers(module: str) -> dict[str, list[str]]:
    """Server modules that importing ``module`` can load (any import, any depth, packages' __init__ included),
    each with the chain of imports that gets there."""
    chains, todo = {module: [module]}, [module]
    while todo:
        current = todo.pop()
        if current != module and (matches(current, SERVER) or
                                  (matches(current, LAUNCHERS) and not matches(current, CLIENT))):
            continue
        for _, name in imports(MODULES[current], current):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                step = ".".join(parts[:i])
                if step in MODULES and step not in chains:
                    chains[step] = [*chains[current], step]
                    todo.append(step)
    return {m: chain for m, chain in chains.items() if m != module and matches(m, SERVER)}


def test_the_module_lists_name_real_modules():
    clients = [m for m in MODULES if matches(m, CLIENT)]
    servers = [m for m in MODULES if matches(m, SERVER)]
    assert {"adapterfleet.sdk.store", "adapterfleet.store.client", "adapterfleet.store.aio_client",
            "adapterfleet.cli.commands"} <= set(clients)
    assert {"adapterfleet.store.servicer", "adapterfleet.store.registry_servicer", "adapterfleet.store.service",
            "adapterfleet.common.server", "adapterfleet.worker.model_host", "adapterfleet.router.proxy"} <= set(servers)
    assert not set(clients) & set(servers)


def test_clients_never_import_servers():
    assert layering_violations(MODULES) == []


def test_clients_do_not_reach_servers_through_other_modules():
    bad = [" -> ".join(chain) for client in sorted(MODULES) if matches(client, CLIENT) and not matches(client, SERVER)
           for chain in reached_servers(client).values()]
    assert bad == []


def test_the_check_catches_a_lazy_import_of_a_server(tmp_path):
    bad = tmp_path / "client.py"
    bad.write_text("def f():\n    from adapterfleet.store.registry_servicer import record_from_pb\n"
                   "    from adapterfleet.common import server\n    from ..worker import model_host\n")
    found = layering_violations({"adapterfleet.sdk.bad": bad})
    assert [f.rsplit(" ", 1)[-1] for f in found] == ["adapterfleet.store.registry_servicer",
                                                     "adapterfleet.common.server", "adapterfleet.worker.model_host"]


def test_the_check_follows_imports_through_a_module_in_between(tmp_path, monkeypatch):
    files = {"adapterfleet.sdk.bad": "from adapterfleet.common import middle\n",
             "adapterfleet.common.middle": "def f():\n    import adapterfleet.store.registry\n",
             "adapterfleet.store.registry": "",
             "adapterfleet.cli.commands": "def serve():\n    from adapterfleet.cli import store_serve\n",
             "adapterfleet.cli.store_serve": "from adapterfleet.store import registry\n"}
    modules = {}
    for name, text in files.items():
        modules[name] = tmp_path / f"{name}.py"
        modules[name].write_text(text)
    monkeypatch.setitem(globals(), "MODULES", modules)
    assert reached_servers("adapterfleet.sdk.bad") == {
        "adapterfleet.store.registry": ["adapterfleet.sdk.bad", "adapterfleet.common.middle",
                                        "adapterfleet.store.registry"]}
    assert reached_servers("adapterfleet.cli.commands") == {}  # a launcher it hands over to is not followed


def test_nothing_imports_the_repository_folders_as_packages():
    files = [*MODULES.values(), *sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "benchmarks").rglob("*.py"))]
    bad = [f"{shown(path)}:{line}: imports {name}"
           for path in files for line, name in imports(path, "")
           if name.split(".")[0] in REPO_FOLDERS]
    assert bad == []
