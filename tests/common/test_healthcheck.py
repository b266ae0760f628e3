"""adapterfleet.common.healthcheck against a real gRPC server with the standard health service, on a free port."""

import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from adapterfleet.common import healthcheck
from adapterfleet.common.embedded_redis import free_port

REPO = Path(__file__).resolve().parents[2]
Status = health_pb2.HealthCheckResponse


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_serving_exits_0(health_server):
    addr, servicer = health_server
    servicer.set("", Status.SERVING)
    assert healthcheck.main([addr]) == 0


def test_not_serving_exits_1_and_says_so(health_server, capsys):
    addr, servicer = health_server
    servicer.set("", Status.NOT_SERVING)  # what a draining service answers
    assert healthcheck.main([addr]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_named_service(health_server, capsys):
    addr, servicer = health_server
    servicer.set("adapterfleet.v1.Worker", Status.SERVING)
    assert healthcheck.main([addr, "--service", "adapterfleet.v1.Worker"]) == 0
    assert healthcheck.main([addr, "--service", "adapterfleet.v1.Nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_nothing_listening_exits_1():
    ok, why = healthcheck.check(f"127.0.0.1:{free_port()}", timeout=2.0)
    assert not ok and why.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))


def test_module_entry_point(health_server):
    """The exact form docker-compose runs: `python -m adapterfleet.common.healthcheck ADDR`."""
    addr, servicer = health_server
    servicer.set("", Status.SERVING)
    run = subprocess.run([sys.executable, "-m", "adapterfleet.common.healthcheck", addr], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "SERVING" in run.stdout
