"""docker-compose.yml, the Dockerfile and .dockerignore: valid against the compose spec, and in step with the CLI
and with each other (no Docker engine here to run them).

Each check is a function returning a list of problems; the tests assert it is empty for the real files, and
test_checks_catch_broken_files proves each one fails on a broken copy.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib.util
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@functools.lru_cache(maxsize=1)
def dockerfile_instructions() -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_entrypoint() -> list[str]:
    entrypoints = [json.loads(arg) for word, arg in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    return entrypoints[-1]


def _words(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def ours(svc: dict, compose: dict) -> bool:
    """Built from our Dockerfile, or tagged like a service that is."""
    built = {other.get("image") for other in compose["services"].values() if "build" in other}
    return "build" in svc or svc.get("image") in built - {None}


def argv(svc: dict, compose: dict) -> list[str]:
    """What the container runs: its entrypoint (the image's unless overridden) + its command."""
    entry = _words(svc["entrypoint"]) if "entrypoint" in svc else (image_entrypoint() if ours(svc, compose) else [])
    return entry + _words(svc.get("command"))


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def fleet(compose: dict, cli) -> dict[str, tuple[str, object]]:
    """{service: (store|worker|router, settings)} for every service that runs `adapterfleet ... serve`, read as
    `main` reads them (flags > the container's ADAPTERFLEET_* environment > --config)."""
    out = {}
    for name, svc in compose["services"].items():
        words = argv(svc, compose)
        if words[:1] == ["adapterfleet"]:
            try:
                args = cli.layered(words[1:], environment(svc))
            except cli.Error:
                continue  # reported by cli_problems
            if getattr(args, f"{args.command}_cmd", None) == "serve":
                out[name] = (args.command, args)
    return out


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def seconds(duration) -> float:
    """Compose durations: "1m30s", "20s", "500ms"."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def published(svc: dict) -> list[tuple[str, int, int]]:
    """[(host ip, host port, container port)] from short ("127.0.0.1:9101:9090") or long syntax."""
    out = []
    for spec in svc.get("ports", []):
        if isinstance(spec, dict):
            out.append((spec.get("host_ip", "0.0.0.0"), int(spec["published"]), int(spec["target"])))
            continue
        parts = str(spec).split("/")[0].split(":")
        if len(parts) == 1:
            continue  # container port only: Docker picks a free host port
        ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        out.append((ip, int(parts[-2]), int(parts[-1])))
    return out


# --- the checks ----------------------------------------------------------------------------------------------


def schema_problems(compose: dict, cli) -> list[str]:
    schema = get_builtin_schema("vendor.compose-spec")  # what `check-jsonschema --builtin-schema` uses
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(compose)]


def cli_problems(compose: dict, cli) -> list[str]:
    """Every command of our image parses: `adapterfleet ...` with build_parser, `python -m MOD ...` with MOD's."""
    problems = []
    for name, svc in compose["services"].items():
        words = argv(svc, compose)
        if words[:1] == ["adapterfleet"]:
            try:
                cli.layered(words[1:], environment(svc))
            except cli.Error as err:
                problems.append(f"{name}: {err}")
        elif words[:2] == ["python", "-m"]:
            problems += [f"{name}: {p}" for p in cli.module_problems(words[2], words[3:])]
        elif ours(svc, compose):
            problems.append(f"{name}: runs {words[:1]} from our image; expected adapterfleet or python -m")
    return problems


def topology_problems(compose: dict, cli) -> list[str]:
    roles = [role for role, _ in fleet(compose, cli).values()]
    want = {"store": 1, "worker": 2, "router": 1}
    problems = [f"expected {n} `{role} serve` service(s), found {roles.count(role)}"
                for role, n in want.items() if roles.count(role) != n]
    problems += [f"no {name} service" for name in ("redis", "minio") if name not in compose["services"]]
    return problems


def depends(svc: dict) -> dict[str, dict]:
    """depends_on in either form, as {service: {"condition": ...}}."""
    deps = svc.get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def dependency_problems(compose: dict, cli) -> list[str]:
    services = compose["services"]
    problems = []
    for name, svc in services.items():
        for dep, spec in depends(svc).items():
            if dep not in services:
                problems.append(f"{name} depends on unknown service {dep}")
                continue
            if spec.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if spec.get("condition") == "service_completed_successfully" and services[dep].get("restart") != "no":
                problems.append(f"{name} waits for {dep} to complete, but {dep} is not a one-shot (restart: 'no')")
    for name, (role, args) in fleet(compose, cli).items():
        if role in ("worker", "router"):
            store = split_addr(args.store or "")[0]
            if store not in depends(services[name]):
                problems.append(f"{name} does not depend on its store {store}")
    return problems


def mounts(svc: dict) -> list[tuple[str, str, bool]]:
    """[(source, target, read_only)] from short ("models:/models:ro") or long syntax."""
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, dict):
            out.append((vol.get("source", ""), vol["target"], bool(vol.get("read_only"))))
        else:
            parts = vol.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0], "ro" in parts[2:]))
    return out


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def volume_problems(compose: dict, cli) -> list[str]:
    """Named volumes are declared; each worker's --base-model lies on a volume the base-model job writes it to."""
    services, declared = compose["services"], compose.get("volumes") or {}
    problems = []
    for name, svc in services.items():
        for source, _, _ in mounts(svc):
            if not source.startswith((".", "/", "~")) and source not in declared:
                problems.append(f"{name} mounts volume {source}, not declared under top-level volumes")
    writers = {}  # (volume, path inside it) -> job that writes it
    for name, svc in services.items():
        words = argv(svc, compose)
        if words[:3] == ["python", "-m", "services.demo"] and len(words) > 3:
            out = words[3]
            for source, target, ro in mounts(svc):
                if _under(out, target) and not ro:
                    writers[(source, out[len(target):])] = name
    for name, (role, args) in fleet(compose, cli).items():
        if role != "worker":
            continue
        homes = [(src, args.base_model[len(tgt):]) for src, tgt, _ in mounts(services[name])
                 if _under(args.base_model, tgt)]
        if not homes:
            problems.append(f"{name}: --base-model {args.base_model} is not on any mounted volume")
        elif not homes[0][0].startswith((".", "/")) and homes[0] not in writers:
            problems.append(f"{name}: nothing writes {args.base_model} into volume {homes[0][0]}")
        elif homes[0] in writers:
            job = writers[homes[0]]
            cond = depends(services[name]).get(job, {}).get("condition")
            if cond != "service_completed_successfully":
                problems.append(f"{name} must wait for {job} with condition service_completed_successfully")
    return problems


def address_problems(compose: dict, cli) -> list[str]:
    """Addresses in flags name real services and their real ports; each worker advertises its own name."""
    services, parsed = compose["services"], fleet(compose, cli)
    problems = []
    stores = {(name, args.port) for name, (role, args) in parsed.items() if role == "store"}
    advertised = {}
    for name, (role, args) in parsed.items():
        if role in ("worker", "router") and split_addr(args.store or "") not in stores:
            problems.append(f"{name}: --store={args.store} is not a store service and its --port ({stores})")
        if role == "worker":
            host, port = split_addr(args.advertise or ":0")
            if host != name or port != args.port:
                problems.append(f"{name}: --advertise={args.advertise!r}, expected {name}:{args.port} "
                                "(routers dial it by service name)")
            if args.advertise in advertised:
                problems.append(f"{name} advertises the same address as {advertised[args.advertise]}")
            advertised[args.advertise] = name
        if role == "store":
            for flag, url in (("--redis-url", args.redis_url), ("--s3-endpoint", args.s3_endpoint)):
                host = urlsplit(url or "").hostname
                if host not in services:
                    problems.append(f"{name}: {flag}={url} does not name a compose service")
    return problems


def port_problems(compose: dict, cli) -> list[str]:
    """Host ports never collide; every adapterfleet service publishes its gRPC port and its (non-zero) metrics."""
    problems, seen = [], {}
    for name, svc in compose["services"].items():
        for ip, host_port, _ in published(svc):
            for (other_ip, other_port), other in seen.items():
                same_ip = ip == other_ip or "0.0.0.0" in (ip, other_ip)
                if other_port == host_port and same_ip:
                    problems.append(f"{name} publishes host port {host_port}, already taken by {other}")
            seen[(ip, host_port)] = name
    for name, (_, args) in fleet(compose, cli).items():
        inside = {container for _, _, container in published(compose["services"][name])}
        if not args.metrics_port:
            problems.append(f"{name}: --metrics-port is 0 (metrics off)")
        for what, port in (("gRPC", args.port), ("metrics", args.metrics_port)):
            if port and port not in inside:
                problems.append(f"{name}: {what} port {port} is not published")
    return problems


def health_problems(compose: dict, cli) -> list[str]:
    """Long-running services have healthchecks; ours ask grpc.health.v1 on their own --port."""
    services, parsed = compose["services"], fleet(compose, cli)
    problems = []
    for name, svc in services.items():
        if svc.get("restart") == "no":
            continue
        if "healthcheck" not in svc:
            problems.append(f"{name} has no healthcheck")
            continue
        test = _words(svc["healthcheck"]["test"])
        if name in parsed:
            want = ["CMD", "python", "-m", "services.common.healthcheck", f"127.0.0.1:{parsed[name][1].port}"]
            if test != want:
                problems.append(f"{name}: healthcheck {test}, expected {want}")
            elif importlib.util.find_spec("services.common.healthcheck") is None:
                problems.append("services.common.healthcheck is missing")
    return problems


def drain_problems(compose: dict, cli) -> list[str]:
    """stop_grace_period (default 10 s) outlasts --drain-seconds, so SIGKILL never cuts a drain short."""
    problems = []
    for name, (_, args) in fleet(compose, cli).items():
        grace = seconds(compose["services"][name].get("stop_grace_period", "10s"))
        if grace <= args.drain_seconds:
            problems.append(f"{name}: stop_grace_period {grace:g}s is not beyond --drain-seconds "
                            f"{args.drain_seconds:g}")
    return problems


def credential_problems(compose: dict, cli) -> list[str]:
    """The store's S3 credentials are MinIO's (both read the same demo variables)."""
    services = compose["services"]
    minio = environment(services["minio"])
    want = {"AWS_ACCESS_KEY_ID": minio.get("MINIO_ROOT_USER"),
            "AWS_SECRET_ACCESS_KEY": minio.get("MINIO_ROOT_PASSWORD")}
    problems = []
    for name, (role, _) in fleet(compose, cli).items():
        if role == "store":
            env = environment(services[name])
            problems += [f"{name}: {k}={env.get(k)!r}, MinIO has {v!r}" for k, v in want.items() if env.get(k) != v]
    return problems


CHECKS = [schema_problems, cli_problems, topology_problems, dependency_problems, volume_problems, address_problems,
          port_problems, health_problems, drain_problems, credential_problems]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removesuffix("_problems"))
def test_compose_file(check, cli):
    assert check(load_compose(), cli) == []


def test_compose_file_passes_check_jsonschema_cli():
    """The exact CI command, through the console script installed beside this Python."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "check-jsonschema"
    if not exe.exists():
        pytest.skip(f"check-jsonschema is not installed beside {sys.executable} (the test extra installs it)")
    run = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


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
    ("init job args", _set("services/base-model/command", []), cli_problems, "services.demo"),
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
                              ["CMD", "python", "-m", "services.common.healthcheck", "127.0.0.1:50062"]),
     health_problems, "worker-2"),
    ("no healthcheck", lambda c: c["services"]["redis"].pop("healthcheck"), health_problems, "redis"),
    ("short grace", _set("services/worker-1/stop_grace_period", "20s"), drain_problems, "worker-1"),
    ("credentials", _set("services/store/environment/AWS_SECRET_ACCESS_KEY", "other"), credential_problems,
     "AWS_SECRET_ACCESS_KEY"),
]


@pytest.mark.parametrize("what,mutate,check,expect", BROKEN, ids=[b[0] for b in BROKEN])
def test_checks_catch_broken_files(what, mutate, check, expect, cli):
    compose = copy.deepcopy(load_compose())
    mutate(compose)
    problems = check(compose, cli)
    assert any(expect in p for p in problems), f"{what}: {check.__name__} did not notice; said {problems}"


# --- Dockerfile and .dockerignore ----------------------------------------------------------------------------


def test_dockerfile_base_torch_first_and_project_files():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    torch = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "torch==2.13.0" in a)
    assert "TORCH_INDEX_URL" in steps[torch][1], "torch must come from the index given as a build arg"
    assert any(w == "ARG" and a.startswith("TORCH_INDEX_URL") for w, a in steps[:torch])
    copies = [(i, a.split()) for i, (w, a) in enumerate(steps) if w == "COPY"]
    copied = {src for _, words in copies for src in words[:-1]}
    assert {"protos", "store", "services", "pyproject.toml", "README.md"} <= copied
    assert torch < min(i for i, _ in copies), "torch is installed before any project file is copied"
    install = [i for i, (w, a) in enumerate(steps) if w == "RUN" and re.search(r"pip install .*\s\.(\s|$)", a)]
    assert install and install[-1] > max(i for i, _ in copies), "the project is installed after it is copied"


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
    assert scripts["adapterfleet"] == "services.cli.main:main"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for top-level paths: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path.split("/")[0], pat):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_build_copies():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {src for w, a in dockerfile_instructions() if w == "COPY" for src in a.split()[:-1]}
    for path in sorted(copied):
        assert not dockerignored(path, patterns), f".dockerignore drops {path}, which the Dockerfile copies"
    for path in (".venv", ".git", "tests", "benchmarks", ".adapterfleet", "docs"):
        assert dockerignored(path, patterns), f".dockerignore sends {path} to the build"
