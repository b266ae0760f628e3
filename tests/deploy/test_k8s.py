"""deploy/k8s: the base and every overlay render with `kubectl kustomize`, every document is valid for Kubernetes
1.33 (strict: unknown fields fail), and the manifests agree with the CLI and with each other.

The checks live in k8s_checks.py, rendering and reading in k8s_render.py; here each check must find no problem in
any directory, and must find the one each broken copy of the base (or of an overlay) has.
"""

from __future__ import annotations

import copy

import pytest

from tests.deploy.k8s_checks import (
    CHECKS,
    args_problems,
    backend_problems,
    config_problems,
    drain_problems,
    duplicates,
    hpa_problems,
    metrics_problems,
    overlay_problems,
    probe_problems,
    region_settings,
    schema_problems,
    security_problems,
    service_problems,
    worker_problems,
)
from tests.deploy.k8s_render import DIRS, OVERLAYS, SECRET, container, find, pod_spec, pods, render, resolved
from tests.deploy.shared import REPO, assert_catches, check_id


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
@pytest.mark.parametrize("directory", DIRS)
def test_manifests(directory, check, cli):
    docs = render(directory)
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= {d["kind"] for d in docs}
    sections = {s.section for s in resolved(docs, cli)}
    assert sections == {"store", "worker", "router"}, f"`SECTION serve` containers: {sections} (the checks need all)"
    assert check(docs, cli) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_a_complete_region(overlay, cli):
    assert overlay_problems(render(f"overlays/{overlay}"), cli) == []


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
    ("init job args",
     lambda d: pod_spec(d, W)["initContainers"][0].update(command=["python", "-m", "adapterfleet.demo"]),
     args_problems, "adapterfleet.demo"),
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
    assert_catches(what, check, copy.deepcopy(render("base")), mutate, expect, cli)


@pytest.mark.parametrize("what,mutate,expect", [
    ("image tag", lambda d: [c.update(image="ghcr.io/example/adapterfleet:latest") for _, p in pods(d)
                             for c in p["spec"]["containers"]], "latest"),
    ("namespace", lambda d: find(d, "Service", R)["metadata"].update(namespace="default"), "namespace"),
    ("region unset", lambda d: find(d, "ConfigMap", "adapterfleet-region")["data"].update(region="local"), "region"),
])
def test_overlay_check_catches(what, mutate, expect, cli):
    assert_catches(what, overlay_problems, copy.deepcopy(render(f"overlays/{OVERLAYS[0]}")), mutate, expect, cli)


def test_duplicate_regions_are_caught():
    same = {"region": "us-east-1", "bucket": "b", "namespace": "n"}
    assert len(duplicates({"a": same, "b": dict(same)})) == 3
