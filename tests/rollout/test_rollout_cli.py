"""`adapterfleet rollout ...` exactly as the issue spells it, against a running store (JSON and text)."""

from __future__ import annotations

import json

import pytest

from adapterfleet.cli.main import main
from tests.rollout.conftest import wait_for


def cli(capsys, *argv: str) -> tuple[int, str]:
    """(exit code, stdout; or stderr, where errors go, when it failed)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out if code == 0 else captured.err


def cli_json(capsys, *argv: str) -> dict:
    code, out = cli(capsys, *argv, "--json")
    assert code == 0, out
    return json.loads(out)


def test_start_status_pause_resume_abort_list(lone_store, push_lone, capsys):
    push_lone("acme/cli")
    store = ("--store", lone_store.address)
    s = cli_json(capsys, "rollout", "start", "acme/cli", "--alias", "prod", "--to", "2", "--steps", "5,25,50,100",
                 "--interval", "60s", "--max-error-rate", "0.02", "--max-p99-ms", "500", "--min-requests", "7",
                 "--no-warm", *store)
    assert (s["state"], s["from_version"], s["to_version"], s["steps"]) == ("running", 1, 2, [5, 25, 50, 100])
    assert (s["interval_s"], s["max_error_rate"], s["max_p99_ms"], s["min_requests"]) == (60.0, 0.02, 500.0, 7)
    wait_for(lambda: cli_json(capsys, "rollout", "status", "acme/cli", "--alias", "prod", *store)["step"] == 0,
             what="step 1")
    s = wait_for(lambda: (s := cli_json(capsys, "rollout", "status", "acme/cli", "--alias", "prod", *store))["gates"][
        "verdict"] and s, what="a judged window")
    assert s["weights"] == {"1": 95, "2": 5} and s["alias_targets"] == "1:95,2:5"
    assert s["gates"]["verdict"].startswith("waiting: v2 has 0 of the 7")  # no traffic yet: nothing judged
    assert cli_json(capsys, "rollout", "pause", "acme/cli", "--alias", "prod", *store)["state"] == "paused"
    code, text = cli(capsys, "rollout", "status", "acme/cli", "--alias", "prod", *store)
    assert code == 0 and "acme/cli@prod: paused, step 1 of 4" in text and "1:95,2:5" in text, text
    assert cli_json(capsys, "rollout", "resume", "acme/cli", "--alias", "prod", *store)["state"] == "running"
    s = cli_json(capsys, "rollout", "abort", "acme/cli", "--alias", "prod", *store)
    assert s["state"] == "aborted" and s["weights"] == {"1": 100} and "aborted by request" in s["reason"]
    listed = cli_json(capsys, "rollout", "list", *store)["rollouts"]
    assert [(r["name"], r["state"]) for r in listed if r["name"] == "acme/cli"] == [("acme/cli", "aborted")]
    code, text = cli(capsys, "rollout", "list", *store)
    assert "acme/cli@prod" in text and "aborted" in text
    # a finished rollout takes no commands, and says why
    code, out = cli(capsys, "rollout", "pause", "acme/cli", "--alias", "prod", "--json", *store)
    assert code == 1 and "aborted" in json.loads(out)["error"]["message"]


@pytest.mark.parametrize(("args", "needle"), [
    (("--to", "9"), "does not exist"),
    (("--to", "1"), "already points at v1"),
    (("--to", "2", "--steps", "5,50"), "last step must be 100"),
    (("--to", "2", "--steps", "50,25,100"), "increasing"),
    (("--to", "2", "--interval", "soon"), "duration"),
    (("--to", "2", "--max-error-rate", "2"), "--max-error-rate"),
])
def test_start_refuses_what_cannot_work_and_says_why(lone_store, push_lone, capsys, args, needle):
    push_lone("acme/clibad")
    code, out = cli(capsys, "rollout", "start", "acme/clibad", "--alias", "prod", *args, "--json", "--store",
                    lone_store.address)
    assert code == 1
    assert needle in json.loads(out)["error"]["message"], out


def test_a_second_rollout_of_the_same_alias_is_refused(lone_store, push_lone, capsys):
    push_lone("acme/twice")
    store = ("--store", lone_store.address)
    cli_json(capsys, "rollout", "start", "acme/twice", "--alias", "prod", "--to", "2", "--interval", "60s",
             "--no-warm", *store)
    code, out = cli(capsys, "rollout", "start", "acme/twice", "--alias", "prod", "--to", "3", "--json", *store)
    assert code == 1 and "already running" in json.loads(out)["error"]["message"]
    cli_json(capsys, "rollout", "abort", "acme/twice", "--alias", "prod", *store)


def test_serve_flags_set_the_controller_and_the_routers_reports():
    from adapterfleet.cli.flags import parse_layered
    from adapterfleet.cli.main import build_parser
    from adapterfleet.cli.router_serve import config_from_args as router_config
    from adapterfleet.cli.store_serve import config_from_args as store_config
    from adapterfleet.common.errors import InvalidArgument

    args = parse_layered(build_parser(), ["store", "serve", "--insecure", "--rollout-lease-seconds", "5",
                                          "--rollout-tick-seconds", "0.25", "--no-rollouts"], {})
    rc = store_config(args).rollout
    assert (rc.enabled, rc.lease_s, rc.tick_s) == (False, 5.0, 0.25)
    env = {"ADAPTERFLEET_ROLLOUT_LEASE_SECONDS": "0.1"}  # shorter than a tick: the lease would lapse between renewals
    with pytest.raises(InvalidArgument, match="shorter than --rollout-lease-seconds"):
        store_config(parse_layered(build_parser(), ["store", "serve", "--insecure"], env))
    args = parse_layered(build_parser(), ["router", "serve", "--insecure", "--version-report-seconds", "2"], {})
    assert router_config(args, "127.0.0.1:1").version_report_s == 2.0
