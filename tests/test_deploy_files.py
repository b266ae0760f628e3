"""docker-compose.yml stays valid and in step with the CLI (no Docker engine here to run it)."""

from pathlib import Path

import yaml

from services.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_compose_services_parse_and_use_real_cli_flags():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "minio", "store"} <= set(services)
    for name, svc in services.items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd and cmd[0] == "adapterfleet":
            build_parser().parse_args(cmd[1:])  # exits (SystemExit) on an unknown or malformed flag
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    for svc in services.values():
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in compose.get("volumes", {}), volume


def test_dockerfile_copies_every_top_level_package():
    text = (REPO / "Dockerfile").read_text()
    for package in ("protos", "store", "services"):
        assert f"COPY {package} {package}" in text
