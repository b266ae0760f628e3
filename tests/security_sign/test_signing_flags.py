"""`worker serve --trust-key` (repeatable, TENANT=PEM) and `push --sign-key` reach the typed configs; the
environment gives a comma-separated list that flags replace."""

from __future__ import annotations

from adapterfleet.cli.flags import parse_layered
from adapterfleet.cli.main import build_parser
from adapterfleet.cli.signing_flags import trust_keys
from adapterfleet.cli.worker_serve import config_from_args

SERVE = ["worker", "serve", "--base-model", "/m", "--insecure"]


def parse(argv, env=None):
    return parse_layered(build_parser(), argv, env or {})


def test_trust_keys_from_flags_env_and_none():
    args = parse([*SERVE, "--trust-key", "all.pem", "--trust-key", "acme=acme.pem"])
    assert config_from_args(args, "store:1").trust_keys == ("all.pem", "acme=acme.pem")
    env = {"ADAPTERFLEET_TRUST_KEY": "all.pem, acme=acme.pem"}
    assert trust_keys(parse(SERVE, env)) == ("all.pem", "acme=acme.pem")
    assert trust_keys(parse([*SERVE, "--trust-key", "flag.pem"], env)) == ("flag.pem",)  # a flag wins
    assert config_from_args(parse(SERVE), "store:1").trust_keys == ()


def test_push_sign_key_and_pull_force_flags():
    args = parse(["push", "dir", "--name", "acme/x", "--sign-key", "k.pem"])
    assert args.sign_key == "k.pem"
    assert parse(["pull", "acme/x@1", "out", "--force"]).force is True
    assert parse(["pull", "acme/x@1", "out"]).force is False
