"""The checks on rendered deploy/k8s documents: each is a function (docs, cli) -> problems, and finds none in the
base or any overlay (test_k8s.py proves each finds the problem a broken copy has)."""

from __future__ import annotations

import kubernetes_validate

from tests.deploy.k8s_render import (
    SECRET,
    all_containers,
    configmap_data,
    env_values,
    ident,
    kind,
    mount_of,
    pods,
    quantity,
    render,
    resolved,
    serves,
)
from tests.deploy.shared import split_addr, yaml_document

KUBE_VERSION = "1.33"


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
    for _workload, pod in pods(docs):
        for c in all_containers(pod):
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
            parsed = yaml_document(text)
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
        for c in all_containers(pod):
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
            pod, container_port = targets.get(split_addr(s.args.store or ""), (None, None))
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
    """Readiness and liveness (and startup, if any) are gRPC health checks on the service's own --port: the
    kubelet's `grpc:` probe for a plaintext port, `python -m adapterfleet.common.healthcheck 127.0.0.1:PORT` (which
    reads ADAPTERFLEET_TLS_*) for a TLS one, since the kubelet's gRPC probes speak no TLS."""
    problems = []
    for s in resolved(docs, cli):
        declared = {p["containerPort"] for p in s.container.get("ports", [])}
        if s.args.port not in declared:
            problems.append(f"{s.name}: --port {s.args.port} is not a declared containerPort")
        tls = bool(getattr(s.args, "tls_cert", None))
        exec_probe = ["python", "-m", "adapterfleet.common.healthcheck", f"127.0.0.1:{s.args.port}"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            spec = s.container.get(probe)
            if spec is None:
                if probe != "startupProbe":
                    problems.append(f"{s.name}: no {probe}")
            elif tls and ("grpc" in spec or spec.get("exec", {}).get("command") != exec_probe):
                problems.append(f"{s.name}: {probe} must run {exec_probe} (the port speaks TLS; the kubelet's "
                                f"grpc probes do not): {spec}")
            elif not tls and spec.get("grpc", {}).get("port") != s.args.port:
                problems.append(f"{s.name}: {probe} is not a grpc probe on --port {s.args.port}: {spec}")
    return problems


def drain_problems(docs, cli) -> list[str]:
    """terminationGracePeriodSeconds (default 30) outlasts --drain-seconds, so SIGKILL never cuts a drain short."""
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
        for c in all_containers(pod):
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
        if not s.args.no_native_kernel:  # built there on first start: a read-only root would leave torch's ops
            mount, volume = mount_of(s.container, s.pod, s.args.native_dir)
            if volume is None or mount.get("readOnly"):
                problems.append(f"{s.name}: native-dir {s.args.native_dir} is not on a writable volume")
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
        _, volume = mount_of(s.container, s.pod, s.args.base_model)
        if volume is None:
            problems.append(f"{s.name}: --base-model {s.args.base_model} is not on a mounted volume")
        elif "emptyDir" in volume:
            writers = [c for c in s.pod["spec"].get("initContainers", [])
                       if c.get("command", [])[:3] == ["python", "-m", "adapterfleet.demo"]
                       and s.args.base_model in c["command"][3:] + c.get("args", [])
                       and any(m["name"] == volume["name"] for m in c.get("volumeMounts", []))]
            if not writers:
                problems.append(f"{s.name}: --base-model {s.args.base_model} is on an emptyDir nothing fills")
        limit = s.container.get("resources", {}).get("limits", {}).get("memory")
        if limit is None or quantity(limit) <= s.args.host_cache_mb << 20:
            problems.append(f"{s.name}: memory limit {limit} does not leave room beyond host-cache-mb "
                            f"{s.args.host_cache_mb}")
    return problems


CHECKS = [schema_problems, args_problems, config_problems, service_problems, backend_problems, hpa_problems,
          probe_problems, drain_problems, metrics_problems, security_problems, worker_problems]


# --- regions ---------------------------------------------------------------------------------------------------


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
        for c in all_containers(pod):
            tag = c["image"].rpartition(":")[2] if ":" in c["image"].rpartition("/")[2] else ""
            if tag in ("", "latest"):
                problems.append(f"{c['name']}: image {c['image']} is not pinned to a tag")
    regions = {s.args.region for s in resolved(docs, cli)}
    if len(regions) != 1 or regions & {"local", ""}:
        problems.append(f"services disagree on the region or leave it unset: {regions}")
    return problems


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

