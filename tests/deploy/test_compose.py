"""docker-compose.yml, the Dockerfile and .dockerignore: valid against the compose spec, and in step with the CLI
and with each other (no Docker engine here to run them).

The checks live in compose_checks.py, reading the files in compose_files.py; here each check must find no problem
in the real compose file, and must find the one each broken copy has.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.deploy.compose_checks import (
    CHECKS,
    address_problems,
    cli_problems,
    credential_problems,
    dependency_problems,
    drain_problems,
    health_problems,
    port_problems,
    schema_problems,
    topology_problems,
    volume_problems,
)
from tests.deploy.compose_files import (
    COMPOSE,
    copied_paths,
    dockerfile_instructions,
    dockerignore_patterns,
    dockerignored,
    fleet,
    image_entrypoint,
    load_compose,
)
from tests.deploy.shared import REPO, assert_catches, check_id, tool


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
def test_compose_file(check, cli):
    compose = load_compose()
    roles = {role for role, _ in fleet(compose, cli).values()}
    assert roles == {"store", "worker", "router"}, f"`SECTION serve` services: {roles} (the checks need all)"
    assert check(compose, cli) == []


def test_compose_file_passes_check_jsonschema_cli():
    """The exact CI command, through the console script the test extra installs."""
    exe = tool("check-jsonschema", "check-jsonschema")
    run = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], check=False,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# --- every check can fail -------------------------------------------------------------------------------------


def _set(path: str, value):
    def mutate(compose):
        *parents, last = path.split("/")
        node = compose
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


def _append_arg(service: str, arg: str):
    def mutate(compose):
        compose["services"][service]["command"].append(arg)
    return mutate


BROKEN = [
    ("typo'd key", _set("services/store/comand", ["store", "serve"]), schema_problems, "comand"),
    ("bad type", _set("services/router/ports", "50071:50071"), schema_problems, "ports"),
    ("unknown flag", _append_arg("worker-1", "--max-slotz=3"), cli_problems, "--max-slotz"),
    ("abbreviated flag", _append_arg("worker-1", "--max-slot=3"), cli_problems, "--max-slot"),
    ("bad flag value", _append_arg("router", "--eps=lots"), cli_problems, "--eps"),
    ("init job args", _set("services/base-model/command", []), cli_problems, "adapterfleet.demo"),
    ("one worker", lambda c: c["services"].pop("worker-2"), topology_problems, "worker"),
    ("unknown dependency", _set("services/router/depends_on/stor", {"condition": "service_started"}),
     dependency_problems, "stor"),
    ("init job not awaited", _set("services/worker-1/depends_on/base-model", {"condition": "service_started"}),
     volume_problems, "service_completed_successfully"),
    ("undeclared volume", lambda c: c["volumes"].pop("worker-2-cache"), volume_problems, "worker-2-cache"),
    ("model on no volume", _append_arg("worker-2", "--base-model=/srv/model"), volume_problems, "/srv/model"),
    ("advertise unknown name", _append_arg("worker-2", "--advertise=worker-3:50061"), address_problems, "worker-3"),
    ("advertise wrong port", _append_arg("worker-1", "--advertise=worker-1:50062"), address_problems, "worker-1"),
    ("store address", _append_arg("router", "--store=store:50052"), address_problems, "--store"),
    ("redis host", _append_arg("store", "--redis-url=redis://cache:6379/0"), address_problems, "--redis-url"),
    ("port collision", _set("services/worker-2/ports", ["127.0.0.1:50061:50061", "127.0.0.1:9103:9090"]),
     port_problems, "50061"),
    ("metrics off", _append_arg("router", "--metrics-port=0"), port_problems, "metrics"),
    ("metrics unpublished", _set("services/store/ports", ["127.0.0.1:50051:50051"]), port_problems, "9090"),
    ("healthcheck port", _set("services/worker-2/healthcheck/test",
                              ["CMD", "python", "-m", "adapterfleet.common.healthcheck", "127.0.0.1:50062"]),
     health_problems, "worker-2"),
    ("no healthcheck", lambda c: c["services"]["redis"].pop("healthcheck"), health_problems, "redis"),
    ("short grace", _set("services/worker-1/stop_grace_period", "20s"), drain_problems, "worker-1"),
    ("credentials", _set("services/store/environment/AWS_SECRET_ACCESS_KEY", "other"), credential_problems,
     "AWS_SECRET_ACCESS_KEY"),
]


@pytest.mark.parametrize("what,mutate,check,expect", BROKEN, ids=[b[0] for b in BROKEN])
def test_checks_catch_broken_files(what, mutate, check, expect, cli):
    assert_catches(what, check, load_compose(), mutate, expect, cli)


# --- Dockerfile and .dockerignore ----------------------------------------------------------------------------


def test_dockerfile_base_torch_first_and_project_files():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    torch = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "torch==2.13.0" in a)
    assert "TORCH_INDEX_URL" in steps[torch][1], "torch must come from the index given as a build arg"
    assert any(w == "ARG" and a.startswith("TORCH_INDEX_URL") for w, a in steps[:torch])
    copies = [i for i, (w, _) in enumerate(steps) if w == "COPY"]
    assert {"protos", "store", "services", "pyproject.toml", "README.md"} <= copied_paths()
    assert torch < min(copies), "torch is installed before any project file is copied"
    install = [i for i, (w, a) in enumerate(steps) if w == "RUN" and re.search(r"pip install .*\s\.(\s|$)", a)]
    assert install and install[-1] > max(copies), "the project is installed after it is copied"


def test_dockerfile_runs_adapterfleet_as_non_root():
    steps = dockerfile_instructions()
    users = [a for w, a in steps if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    last_user = max(i for i, (w, _) in enumerate(steps) if w == "USER")
    assert all(w != "RUN" for w, _ in steps[last_user:]), "nothing runs as root after USER"
    assert image_entrypoint() == ["adapterfleet"]
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["adapterfleet"] == "adapterfleet.cli.main:main"


def test_dockerignore_sends_only_what_the_build_copies():
    patterns, copied = dockerignore_patterns(), copied_paths()
    assert copied, "the Dockerfile copies nothing"
    for path in sorted(copied):
        assert not dockerignored(path, patterns), f".dockerignore drops {path}, which the Dockerfile copies"
    for path in (".venv", ".git", "tests", "benchmarks", ".adapterfleet", "docs"):
        assert dockerignored(path, patterns), f".dockerignore sends {path} to the build"
