"""docker-compose.yml, the Dockerfile and .dockerignore, read: what each service runs, its environment, ports,
mounts and dependencies, and its adapterfleet settings as `main` reads them (no Docker engine here to run them)."""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shlex

from tests.deploy.cli_settings import serve_section
from tests.deploy.shared import REPO, yaml_document

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def load_compose() -> dict:
    """A fresh copy of docker-compose.yml (edit it freely)."""
    return yaml_document(COMPOSE.read_text())


# --- the Dockerfile and .dockerignore ------------------------------------------------------------------------


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


def copied_paths() -> set[str]:
    """The sources of every COPY."""
    return {src for word, arg in dockerfile_instructions() if word == "COPY" for src in arg.split()[:-1]}


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for top-level paths: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path.split("/")[0], pat):
            ignored = not negate
    return ignored


# --- services -----------------------------------------------------------------------------------------------


def command_words(value) -> list[str]:
    """A command, entrypoint or healthcheck test in either form (string or list) as a list of words."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def ours(svc: dict, compose: dict) -> bool:
    """Built from our Dockerfile, or tagged like a service that is."""
    built = {other.get("image") for other in compose["services"].values() if "build" in other}
    return "build" in svc or svc.get("image") in built - {None}


def argv(svc: dict, compose: dict) -> list[str]:
    """What the container runs: its entrypoint (the image's unless overridden) + its command."""
    if "entrypoint" in svc:
        entry = command_words(svc["entrypoint"])
    else:
        entry = image_entrypoint() if ours(svc, compose) else []
    return entry + command_words(svc.get("command"))


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def fleet(compose: dict, cli, profile: str | None = None) -> dict[str, tuple[str, object]]:
    """{service: (store|worker|router, settings)} for every service that runs `adapterfleet ... serve`, read as
    `main` reads them (flags > the container's ADAPTERFLEET_* environment > --config). Services of a compose
    profile count only when that ``profile`` is asked for (`docker compose up` alone starts none of them)."""
    out = {}
    for name, svc in compose["services"].items():
        if svc.get("profiles") and profile not in svc["profiles"]:
            continue
        words = argv(svc, compose)
        if words[:1] == ["adapterfleet"]:
            try:
                args = cli.layered(words[1:], environment(svc))
            except cli.Error:
                continue  # reported by cli_problems
            if section := serve_section(args):
                out[name] = (section, args)
    return out


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


def depends(svc: dict) -> dict[str, dict]:
    """depends_on in either form, as {service: {"condition": ...}}."""
    deps = svc.get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


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
