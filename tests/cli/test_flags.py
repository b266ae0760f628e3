"""Settings come from flags, then ADAPTERFLEET_<FLAG>, then the command's section of --config, then defaults."""

from __future__ import annotations

import json

import pytest

from adapterfleet.cli.flags import parse_layered
from adapterfleet.cli.main import build_parser
from adapterfleet.cli.worker_serve import config_from_args


def parse(argv, env=None):
    return parse_layered(build_parser(), argv, env or {})


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("worker:\n  base-model: /models/from-file\n  max-slots: 16\n  metrics_port: 9100\n"
                    "router:\n  eps: 0.5\n")
    return str(path)


def test_flags_beat_environment_beat_file_beat_defaults(config_file):
    args = parse(["--config", config_file, "worker", "serve", "--port", "7"],
                 {"ADAPTERFLEET_MAX_SLOTS": "4", "ADAPTERFLEET_REGION": "eu-west-1"})
    assert (args.port, args.max_slots, args.region, args.base_model) == (7, 4, "eu-west-1", "/models/from-file")
    assert args.metrics_port == 9100 and args.max_batch == 64  # file; default
    args = parse(["--config", config_file, "worker", "serve", "--max-slots", "2", "--insecure"],
                 {"ADAPTERFLEET_MAX_SLOTS": "4"})
    assert args.max_slots == 2
    cfg = config_from_args(args, "store:1")
    assert cfg.max_slots == 2 and cfg.metrics.port == 9100 and cfg.drain_s == 10.0


def test_sections_apply_only_to_their_command(config_file):
    assert parse(["--config", config_file, "router", "serve"]).eps == 0.5
    assert parse(["router", "serve"]).eps == 0.25


def test_config_path_from_environment_and_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"store": {"region": "us-east-1", "blob-cache-mb": 0}}))
    args = parse(["store", "serve"], {"ADAPTERFLEET_CONFIG": str(path)})
    assert (args.region, args.blob_cache_mb) == ("us-east-1", 0)


def test_required_flag_can_come_from_environment_but_not_from_nowhere(capsys):
    assert parse(["worker", "serve"], {"ADAPTERFLEET_BASE_MODEL": "/m"}).base_model == "/m"
    with pytest.raises(SystemExit):
        parse(["worker", "serve"])
    assert "--base-model" in capsys.readouterr().err


@pytest.mark.parametrize("content, env, message", [
    ("worker:\n  max-slot: 3\n", {}, "unknown setting(s) ['max_slot'] in section 'worker'"),
    ("wrker:\n  port: 3\n", {}, "unknown section(s) ['wrker']"),
    ("worker:\n  max-slots: lots\n", {}, "worker.max_slots in"),
    ("worker: [1, 2]\n", {}, "must map command names"),
    ("worker:\n  log-format: xml\n", {}, "'xml' is not one of ['json', 'text']"),
    ("", {"ADAPTERFLEET_PORT": "eighty"}, "ADAPTERFLEET_PORT: 'eighty' is not a valid int"),
    ("worker: {a: [b\n", {}, "is not valid YAML"),
])
def test_bad_settings_name_the_source_and_the_problem(tmp_path, capsys, content, env, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", str(path), "worker", "serve", "--base-model", "/m"], env)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_boolean_flags_from_environment():
    assert parse(["gc"], {"ADAPTERFLEET_DRY_RUN": "true"}).dry_run is True
    assert parse(["gc"], {"ADAPTERFLEET_DRY_RUN": "0"}).dry_run is False


@pytest.mark.parametrize("argv, env, router, worker", [
    (["generate", "--prompt", "x"], {"ADAPTERFLEET_ROUTER": "r:1"}, "r:1", None),
    (["generate", "--prompt", "x"], {"ADAPTERFLEET_WORKER": "w:1"}, None, "w:1"),
    (["generate", "--prompt", "x", "--worker", "w:2"], {"ADAPTERFLEET_ROUTER": "r:1"}, None, "w:2"),  # flag wins
    (["score", "--router", "r:2", "--text", "x"], {"ADAPTERFLEET_ROUTER": "r:1", "ADAPTERFLEET_WORKER": "w:1"},
     "r:2", None),
])
def test_exclusive_addresses_come_from_the_environment_and_a_flag_wins(argv, env, router, worker):
    args = parse(argv, env)
    assert (args.router, args.worker) == (router, worker)


def test_exclusive_addresses_from_the_environment_alone_must_be_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["generate", "--prompt", "x"], {"ADAPTERFLEET_ROUTER": "r:1", "ADAPTERFLEET_WORKER": "w:1"})
    assert exit_.value.code == 2
    assert "ADAPTERFLEET_WORKER and ADAPTERFLEET_ROUTER are both set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["generate", "--prompt", "x"], {})
    assert "one of the arguments --worker --router is required" in capsys.readouterr().err


def test_admin_addresses_come_from_the_environment():
    assert parse(["worker", "stats"], {"ADAPTERFLEET_WORKER": "w:1"}).worker == "w:1"
    assert parse(["router", "stats"], {"ADAPTERFLEET_ROUTER": "r:1"}).router == "r:1"
    assert parse(["worker", "load", "a@1", "--worker", "w:2"], {"ADAPTERFLEET_WORKER": "w:1"}).worker == "w:2"


def test_worker_engine_threads_and_packed_weights_flags():
    args = parse(["worker", "serve", "--base-model", "/m", "--insecure", "--threads", "3", "--no-packed-weights"])
    cfg = config_from_args(args, "store:1")
    assert (cfg.threads, cfg.packed_weights) == (3, False)
    cfg = config_from_args(parse(["worker", "serve", "--base-model", "/m", "--insecure"]), "store:1")
    assert (cfg.threads, cfg.packed_weights) == (0, True)  # 0: every CPU (main() fills $OMP_NUM_THREADS in first)


def test_worker_native_kernel_flags():
    args = parse(["worker", "serve", "--base-model", "/m", "--insecure", "--no-native-kernel", "--native-dir", "/k"])
    cfg = config_from_args(args, "store:1")
    assert (cfg.native_kernel, cfg.native_dir) == (False, "/k")
    cfg = config_from_args(parse(["worker", "serve", "--base-model", "/m", "--insecure"]), "store:1")
    assert (cfg.native_kernel, cfg.native_dir, cfg.decode_attention) == (True, ".adapterfleet/native", True)
    args = parse(["worker", "serve", "--base-model", "/m", "--insecure", "--no-decode-attention"])
    assert config_from_args(args, "store:1").decode_attention is False
    args = parse(["worker", "serve", "--base-model", "/m", "--insecure"], {"ADAPTERFLEET_NO_NATIVE_KERNEL": "1"})
    assert config_from_args(args, "store:1").native_kernel is False
