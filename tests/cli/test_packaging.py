"""Packaging, through real processes: the wheel installs one import name; the base install (no extras) runs the
SDK and the client CLI and says which extra a serving command needs; a user's own `store.py` or `services/`
shadows nothing.

The base install is simulated with an import blocker (a sitecustomize on PYTHONPATH) that makes every module of
the extras unimportable, as in a fresh venv after `pip install adapterfleet`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from adapterfleet.common import extras
from tests.helpers.synthetic import write_adapter

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CLI = Path(sys.executable).with_name("adapterfleet")  # the console script pip installed beside this Python
# every module an extra brings; none may be needed by the base install
BLOCKED = ("torch", "transformers", "boto3", "botocore", "redis", "safetensors", "numpy", "peft",
           "prometheus_client", "grpc_health", "grpc_reflection", "jwt", "cryptography")
BLOCKER = f"""
import sys

BLOCKED = {set(BLOCKED)!r}


class BaseInstallOnly:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: the base install has no extras)",
                                      name=name)
        return None


sys.meta_path.insert(0, BaseInstallOnly())
"""
SHIPPED = (".py", ".pyi", ".proto", ".lua", "py.typed")  # what the wheel must carry of the mapped folders


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def _clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: the package is imported as installed, never from the repository."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# --- the wheel ------------------------------------------------------------------------------------------------------
def _mapped_folders() -> dict[str, Path]:
    """pyproject's package-dir: import package -> repository folder."""
    return {pkg: REPO / folder for pkg, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The entries of a wheel built from the repository (from a copy of it: the build writes build/ and
    *.egg-info next to the sources, which the shared working tree should not get)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    tops = {Path(folder).parts[0] for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    for top in tops:
        shutil.copytree(REPO / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                  str(src)], _clean_env(), src, timeout=300)
    assert build.returncode == 0, build.stderr
    (path,) = out.glob("adapterfleet-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


@pytest.fixture
def wheel_names(wheel) -> list[str]:
    return wheel.namelist()


def test_wheel_installs_only_the_adapterfleet_package(wheel_names):
    strays = [n for n in wheel_names
              if not n.startswith("adapterfleet/") and not re.match(r"adapterfleet-[^/]+\.dist-info/", n)]
    assert not strays, f"the wheel installs more than `adapterfleet`: {strays[:10]}"


def test_wheel_holds_every_package_and_file_of_the_mapped_folders(wheel_names):
    names = set(wheel_names)
    expected_packages, expected_files = set(), set()
    for pkg, folder in _mapped_folders().items():
        for init in folder.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(folder)
            sub = pkg.replace(".", "/") + ("/" + rel.as_posix() if rel.parts else "")
            expected_packages.add(sub)
            expected_files |= {f"{sub}/{f.name}" for f in init.parent.iterdir()
                               if f.is_file() and f.name.endswith(SHIPPED)}
    assert {"adapterfleet", "adapterfleet/v1", "adapterfleet/store", "adapterfleet/cli"} <= expected_packages
    missing_packages = sorted(p for p in expected_packages if f"{p}/__init__.py" not in names)
    assert not missing_packages, f"package folders missing from the wheel (pyproject's packages list?): " \
                                 f"{missing_packages}"
    assert sorted(expected_files - names) == []


def test_the_base_install_requires_only_grpc_protobuf_and_rich(wheel):
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line.removeprefix("Requires-Dist: ") for line in wheel.read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist: ")]
    unconditional = sorted(re.match(r"[A-Za-z0-9_.-]+", r).group().lower() for r in requires if ";" not in r)
    assert unconditional == ["grpcio", "protobuf", "rich"]


def _extra_dists(extra: str) -> set[str]:
    """Distribution names an extra of pyproject installs, its self-references (adapterfleet[server]) followed."""
    out = set()
    for req in PYPROJECT["project"]["optional-dependencies"][extra]:
        name, inner = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", req).groups()
        if name == "adapterfleet":
            for sub in inner.split(","):
                out |= _extra_dists(sub.strip())
        else:
            out.add(name.lower().replace("_", "-"))
    return out


@pytest.mark.parametrize("extra", sorted(extras.MODULES))
def test_the_extras_table_matches_pyproject(extra):
    """extras.MODULES[extra] are exactly the top-level modules the extra's distributions provide (as installed
    in this environment, which has every extra)."""
    by_dist: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    table = set(extras.MODULES[extra])
    for dist in _extra_dists(extra):
        provides = by_dist.get(dist, set())
        assert provides & table, f"the {extra!r} extra installs {dist}, which provides {sorted(provides)}: none " \
                                 f"of them is in extras.MODULES[{extra!r}]"
        table -= provides
    assert not table, f"extras.MODULES[{extra!r}] names {sorted(table)}, which no distribution of that extra provides"


# --- the base install -----------------------------------------------------------------------------------------------
@pytest.fixture
def base_env(tmp_path) -> dict[str, str]:
    """An environment in which nothing of any extra can be imported."""
    site = tmp_path / "base-install"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**_clean_env(), "PYTHONPATH": str(site)}


def test_the_blocker_blocks(base_env, tmp_path):
    for module in BLOCKED:
        out = _run([sys.executable, "-c", f"import {module}"], base_env, tmp_path)
        assert out.returncode == 1 and "blocked: the base install has no extras" in out.stderr, (module, out.stderr)


def test_version(base_env, tmp_path):
    want = importlib.metadata.version("adapterfleet")
    out = _run([str(CLI), "--version"], base_env, tmp_path)
    assert (out.returncode, out.stdout) == (0, f"adapterfleet {want}\n"), out.stderr
    out = _run([sys.executable, "-c", "import adapterfleet; print(adapterfleet.__version__)"], base_env, tmp_path)
    assert (out.returncode, out.stdout) == (0, f"{want}\n"), out.stderr


def test_the_sdk_imports_without_extras(base_env, tmp_path):
    code = ("import sys, adapterfleet\n"
            "from adapterfleet import AdapterStore, AsyncFleetClient, FleetClient, NotFound, from_store\n"
            f"print(sorted(m for m in {BLOCKED!r} if m in sys.modules))")
    out = _run([sys.executable, "-c", code], base_env, tmp_path)
    assert (out.returncode, out.stdout) == (0, "[]\n"), out.stderr


def test_peft_functions_say_which_extra(base_env, tmp_path):
    code = ("from adapterfleet import from_store\n"
            "try:\n"
            "    from_store(None, 'acme/a')\n"
            "except ImportError as err:\n"
            "    print(err)\n")
    out = _run([sys.executable, "-c", code], base_env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("adapterfleet.from_store: this function needs the 'peft' extra: "
                                 "pip install 'adapterfleet[peft]'"), out.stdout


def test_client_commands_run_without_extras(base_env, store, tmp_path):
    """ls, resolve and pull against a real store (started in this process, which has the extras)."""
    store.client().push_dir(write_adapter(tmp_path / "a"), "acme/base-install", alias="prod")
    ls = _run([str(CLI), "ls", "--json", "--store", store.address], base_env, tmp_path)
    assert ls.returncode == 0, ls.stderr
    assert [a["name"] for a in json.loads(ls.stdout)["adapters"]] == ["acme/base-install"]
    resolved = _run([str(CLI), "resolve", "acme/base-install@prod", "--json", "--store", store.address], base_env,
                    tmp_path)
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout)["version"] == 1
    pulled = _run([str(CLI), "pull", "acme/base-install@1", str(tmp_path / "out"), "--store", store.address],
                  base_env, tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() \
        == (tmp_path / "a" / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("verb", ["generate", "score"])
def test_inference_commands_run_without_extras(base_env, tmp_path, verb):
    """Nothing listens on the address: the command gets as far as the call and reports it, importing nothing
    of an extra on the way."""
    out = _run([str(CLI), verb, "--router", "127.0.0.1:1", "--prompt-ids", "1,2"], base_env, tmp_path)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("argv, role", [(["worker", "stats", "--worker"], "worker"),
                                        (["router", "stats", "--router"], "router")])
def test_admin_commands_run_without_extras(base_env, tmp_path, argv, role):
    """`worker load|unload|pin|resident|stats` and `router stats` are client commands: base install only."""
    out = _run([str(CLI), *argv, "127.0.0.1:1", "--json"], base_env, tmp_path)
    assert out.returncode == 1, out.stderr
    error = json.loads(out.stderr)["error"]
    assert error["code"] == "UNAVAILABLE" and error["message"].startswith(f"no {role} at 127.0.0.1:1"), out.stderr


COMMANDS = {what: extra for what, (extra, _) in extras.NEEDS.items() if what.startswith("adapterfleet ")}
FLAGS = {"adapterfleet worker serve": ["--base-model", "/nonexistent/model", "--port", "0"],
         "adapterfleet auth init": ["DIR"],
         "adapterfleet token create": ["--key", "issuer.key", "--tenant", "t", "--scopes", "read"]}


@pytest.mark.parametrize("what", sorted(COMMANDS))
def test_a_serving_command_says_which_extra_to_install(base_env, tmp_path, what):
    out = _run([str(CLI), *what.split()[1:], *FLAGS.get(what, [])], base_env, tmp_path)
    extra = COMMANDS[what]
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"{what}: this command needs the {extra!r} extra: "
                                 f"pip install 'adapterfleet[{extra}]'"), out.stderr
    assert "Traceback" not in out.stderr


def test_a_serving_command_runs_its_flags_check_after_the_extras_check(base_env, tmp_path):
    """`worker serve` without --base-model still names the extra first: installing it is the first fix."""
    out = _run([str(CLI), "worker", "serve"], base_env, tmp_path)
    assert out.returncode == 1 and "pip install 'adapterfleet[worker]'" in out.stderr, out.stderr


# --- a user's own files ---------------------------------------------------------------------------------------------
@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A working directory holding a `store.py` and a `services/` package of the user's own."""
    work = tmp_path / "work"
    (work / "services").mkdir(parents=True)
    (work / "store.py").write_text("raise ImportError('the user store.py was imported')\n")
    (work / "services" / "__init__.py").write_text("raise ImportError('the user services/ was imported')\n")
    return work


def test_user_files_named_store_or_services_break_nothing(store, user_dir, tmp_path):
    env = _clean_env()
    shadow = _run([sys.executable, "-c", "import store"], env, user_dir)
    assert "the user store.py was imported" in shadow.stderr  # the user's files are first on sys.path
    store.client().push_dir(write_adapter(tmp_path / "a"), "acme/mine")
    (user_dir / "script.py").write_text(
        "import sys\n"
        "from adapterfleet import AdapterStore\n"
        "with AdapterStore(sys.argv[1]) as s:\n"
        "    print([a.name for a in s.adapters()])\n")
    script = _run([sys.executable, "script.py", store.address], env, user_dir)
    assert (script.returncode, script.stdout) == (0, "['acme/mine']\n"), script.stderr
    cli = _run([sys.executable, "-m", "adapterfleet.cli.main", "ls", "--json", "--store", store.address], env,
               user_dir)
    assert cli.returncode == 0, cli.stderr
    assert [a["name"] for a in json.loads(cli.stdout)["adapters"]] == ["acme/mine"]
