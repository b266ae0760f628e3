"""The CLI's security contract over real processes: `auth init`, `token create`, secure-by-default `serve`, client
commands over mTLS (flags and environment), the health check, and /metrics on loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from adapterfleet.cli.auth_cmd import Material
from adapterfleet.common.embedded_redis import free_port
from tests.helpers.synthetic import write_adapter
from tests.security_tls.tls_helpers import peer_serial, serial_of

CLI = [sys.executable, "-m", "adapterfleet.cli.main"]
REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERFLEET_")} | {
    "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"}
KEYS = {"ca", "cert", "key", "issuer_key", "issuer_public_key", "admin_token_file"}


def run(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 60):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env or ENV, cwd=cwd or REPO,
                          timeout=timeout)


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> Material:
    d = tmp_path_factory.mktemp("sec") / "fleet"
    out = run("auth", "init", str(d), "--json")
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)
    assert set(paths) == KEYS
    m = Material(d)
    assert paths == m.as_json()
    return m


def test_auth_init_writes_every_file_private_keys_private(material):
    for p in material.as_json().values():
        assert Path(p).is_file(), p
    for secret in (material.key, material.issuer_key, material.admin_token_file, material.ca_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(material.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1"}
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usage} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}  # server and client


def test_auth_init_does_not_overwrite_and_rotate_cert_keeps_the_ca(material, tmp_path):
    again = run("auth", "init", str(material.dir))
    assert again.returncode == 1 and "--rotate-cert" in again.stderr and "--force" in again.stderr, again.stderr
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
        (copy / name).write_bytes((material.dir / name).read_bytes())
    before, ca = serial_of(copy / "tls.crt"), (copy / "ca.crt").read_bytes()
    out = run("auth", "init", str(copy), "--rotate-cert", "--json")
    assert out.returncode == 0, out.stderr
    assert serial_of(copy / "tls.crt") != before and (copy / "ca.crt").read_bytes() == ca


def test_token_create_json_and_plain(material):
    out = run("token", "create", "--key", str(material.issuer_key), "--tenant", "acme", "--scopes", "read,push,serve",
              "--ttl", "2h", "--json")
    assert out.returncode == 0, out.stderr
    minted = json.loads(out.stdout)
    assert set(minted) == {"token", "id", "expires"} and minted["token"].count(".") == 2 and minted["id"]
    plain = run("token", "create", "--key", str(material.issuer_key), "--tenant", "*", "--scopes", "read")
    assert plain.returncode == 0 and plain.stdout.strip().count(".") == 2, plain.stderr
    bad = run("token", "create", "--key", str(material.issuer_key), "--tenant", "acme", "--scopes", "read",
              "--ttl", "soon")
    assert bad.returncode == 1 and "--ttl" in bad.stderr


@pytest.mark.parametrize("command", [["store", "serve"], ["router", "serve"],
                                     ["worker", "serve", "--base-model", "/nonexistent"]])
def test_serve_without_tls_or_auth_refuses_in_one_line(command):
    out = run(*command, "--port", "0")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--insecure" in lines[0] and "adapterfleet auth init DIR" in lines[0], out.stderr


class Store:
    def __init__(self, m: Material, cwd: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*CLI, "store", "serve", "--port", str(self.port), "--data-dir", str(cwd / "store"), "--metrics-port",
             str(free_port()), "--tls-cert", str(m.cert), "--tls-key", str(m.key), "--tls-ca", str(m.ca)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"store did not start: {line}{self.proc.stderr.read()}")
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.proc.stdout.close()
        self.proc.stderr.close()


def test_client_commands_over_mtls_by_flag_and_by_environment(material, tmp_path):
    store = Store(material, tmp_path)
    try:
        tls = ["--tls-ca", str(material.ca), "--tls-cert", str(material.cert), "--tls-key", str(material.key)]
        pushed = run("push", str(write_adapter(tmp_path / "a")), "--name", "team/a", "--store", store.address,
                     "--json", *tls)
        assert pushed.returncode == 0, pushed.stderr
        env = ENV | {"ADAPTERFLEET_STORE": store.address, "ADAPTERFLEET_TLS_CA": str(material.ca),
                     "ADAPTERFLEET_TLS_CERT": str(material.cert), "ADAPTERFLEET_TLS_KEY": str(material.key)}
        listed = run("ls", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert [a["name"] for a in json.loads(listed.stdout)["adapters"]] == ["team/a"]

        plain = run("ls", "--store", store.address, "--json")
        assert plain.returncode == 1
        error = json.loads(plain.stderr)["error"]
        assert error["code"] == "UNAVAILABLE" and "--tls-ca" in error["message"], error
        no_cert = run("ls", "--store", store.address, "--tls-ca", str(material.ca))
        assert no_cert.returncode == 1 and "--tls-cert" in no_cert.stderr, no_cert.stderr

        health = [sys.executable, "-m", "adapterfleet.common.healthcheck", store.address]
        assert subprocess.run(health, capture_output=True, env=ENV, timeout=30).returncode == 1
        ok = subprocess.run(health, capture_output=True, text=True, timeout=30,
                            env=env | {"ADAPTERFLEET_STORE": ""})
        assert ok.returncode == 0, ok.stderr

        # rotation without a restart: the running process serves the new certificate to new connections
        old = serial_of(material.cert)
        assert peer_serial(store.port, material) == old
        rotated = run("auth", "init", str(material.dir), "--rotate-cert")
        assert rotated.returncode == 0, rotated.stderr
        assert peer_serial(store.port, material) == serial_of(material.cert) != old
        again = run("ls", "--json", env=env)
        assert again.returncode == 0 and "team/a" in again.stdout, again.stderr
    finally:
        store.stop()


def test_metrics_bind_loopback_unless_told():
    from adapterfleet.cli.flags import parse_layered
    from adapterfleet.cli.main import build_parser
    from adapterfleet.common.metrics import ServiceMetrics
    from adapterfleet.common.metrics_config import MetricsConfig

    args = parse_layered(build_parser(), ["store", "serve", "--insecure"], {})
    assert args.metrics_host == "127.0.0.1" and not args.reflection
    metrics = ServiceMetrics("t", MetricsConfig(port=free_port()))
    try:
        metrics.serve()
        assert metrics._http.server_address[0] == "127.0.0.1"
    finally:
        metrics.close()
