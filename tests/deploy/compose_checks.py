"""The checks on docker-compose.yml: each is a function (compose, cli) -> problems, and finds none in the real file
(test_compose.py proves each finds the problem a broken copy has)."""

from __future__ import annotations

import importlib.util
from urllib.parse import urlsplit

import jsonschema
from check_jsonschema.builtin_schemas import get_builtin_schema

from tests.deploy.compose_files import (
    argv,
    command_words,
    depends,
    environment,
    fleet,
    mounts,
    ours,
    published,
    seconds,
)
from tests.deploy.shared import split_addr, under


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
        if words[:3] == ["python", "-m", "adapterfleet.demo"] and len(words) > 3:
            out = words[3]
            for source, target, ro in mounts(svc):
                if under(out, target) and not ro:
                    writers[(source, out[len(target):])] = name
    for name, (role, args) in fleet(compose, cli).items():
        if role != "worker":
            continue
        homes = [(src, args.base_model[len(tgt):]) for src, tgt, _ in mounts(services[name])
                 if under(args.base_model, tgt)]
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
        test = command_words(svc["healthcheck"]["test"])
        if name in parsed:
            want = ["CMD", "python", "-m", "adapterfleet.common.healthcheck", f"127.0.0.1:{parsed[name][1].port}"]
            if test != want:
                problems.append(f"{name}: healthcheck {test}, expected {want}")
            elif importlib.util.find_spec("adapterfleet.common.healthcheck") is None:
                problems.append("adapterfleet.common.healthcheck is missing")
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
