"""The token flags as the CLI parses them, and `adapterfleet token revoke` against a real store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from adapterfleet.cli.auth_flags import auth_config
from adapterfleet.cli.flags import parse_layered
from adapterfleet.cli.main import build_parser, main
from adapterfleet.common.errors import Unauthenticated
from adapterfleet.common.security_config import ClientSecurity
from adapterfleet.common.tokens import mint_token
from adapterfleet.store.client import StoreClient
from tests.helpers.servers import start_store


def _serve(argv, env=None):
    return parse_layered(build_parser(), ["store", "serve", "--insecure", *argv], env or {})


def test_auth_public_key_repeats_and_comes_from_the_environment():
    cfg = auth_config(_serve(["--auth-public-key", "a.pem", "--auth-public-key", "b.pem", "--tenant-rps", "5",
                              "--tenant-streams", "2", "--tenant-max-push-mb", "1"]))
    assert cfg.public_keys == (Path("a.pem"), Path("b.pem")) and cfg.enabled
    assert (cfg.limits.requests_per_s, cfg.limits.max_streams, cfg.limits.max_push_bytes) == (5.0, 2, 1 << 20)
    env = {"ADAPTERFLEET_AUTH_PUBLIC_KEY": "old.pem,new.pem", "ADAPTERFLEET_TOKEN": "tok"}
    args = _serve([], env)
    assert auth_config(args).public_keys == (Path("old.pem"), Path("new.pem")) and args.token == "tok"
    assert auth_config(_serve(["--auth-public-key", "x.pem"], env)).public_keys == (Path("x.pem"),)  # flag wins
    assert not auth_config(_serve([])).enabled


@pytest.mark.parametrize("argv", [["ls"], ["push", "d", "--name", "a/b"], ["worker", "serve", "--base-model", "m"],
                                  ["router", "serve"], ["token", "revoke", "x"], ["generate", "--router", "r"]])
def test_every_calling_command_takes_a_token(argv):
    assert parse_layered(build_parser(), [*argv, "--token", "t"], {}).token == "t"


def test_token_revoke_command(store_config, issuer, capsys):
    address, _, stop = start_store(dataclasses.replace(store_config, auth=issuer.auth()))
    try:
        minted = mint_token(issuer.key, ["acme"], ["read"], 600)
        victim = StoreClient(address, security=ClientSecurity(token=minted.token), timeout=10)
        assert victim.list_adapters() == []
        tenant_admin = issuer.token(["acme"], ["admin"])
        assert main(["token", "revoke", minted.id, "--store", address, "--token", tenant_admin]) == 1
        assert "needs a service identity" in capsys.readouterr().err
        admin = issuer.token(["*"], ["admin"])
        assert main(["token", "revoke", minted.id, "--store", address, "--token", admin, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["id"] == minted.id and out["revoked"] is True
        with pytest.raises(Unauthenticated, match="revoked"):
            victim.list_adapters()
        victim.close()
    finally:
        stop()
