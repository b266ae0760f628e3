"""Push validation in child processes (store/validator.py, validate_pool.py, validate_child.py): the same facts and
the same typed errors as in threads; a child that dies, overruns or is abandoned fails only its own step, and the
next step gets a fresh child; close() leaves no process behind (not even a zombie)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
from pathlib import Path

import pytest

from adapterfleet.common.errors import AdapterFleetError, InvalidAdapter, InvalidArgument, Unavailable
from adapterfleet.store import validate_pool
from adapterfleet.store.config import Limits
from adapterfleet.store.safetensors_header import header_bytes_needed
from adapterfleet.store.validate_wire import encode, error_meta, raise_if_error, read_frame_sync
from adapterfleet.store.validator import INLINE_BYTES, Validator

LIMITS = Limits(max_rank=64)


def header_of(tensors: dict[str, tuple[int, ...]], pad: int = 0) -> tuple[bytes, int]:
    """(the safetensors header with its length prefix, the file's size) for F32 tensors of these shapes."""
    doc: dict = {}
    offset = 0
    for name, shape in tensors.items():
        n = 4
        for d in shape:
            n *= d
        doc[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(doc).encode() + b" " * pad
    return struct.pack("<Q", len(raw)) + raw, 8 + len(raw) + offset


def layers(n: int, r: int = 4, hidden: int = 8, target: str = "q_proj") -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i in range(n):
        prefix = f"base_model.model.model.layers.{i}.self_attn.{target}"
        out[f"{prefix}.lora_A.weight"], out[f"{prefix}.lora_B.weight"] = (r, hidden), (hidden, r)
    return out


def config(**fields) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                       "base_model_name_or_path": "tiny", **fields}).encode()


SLOW = config(modules_to_save=[f"keep_{i}" for i in range(4000)])  # compiling 8,000 patterns: seconds


BIG = layers(200)  # a header over INLINE_BYTES: parsed in a child
CASES = {
    "valid": (config(), header_of(BIG)),
    "valid, small header": (config(), header_of(layers(2))),
    "rank above the limit": (config(r=128), header_of(BIG)),
    "catastrophic pattern": (config(target_modules="(a|aa)+b"), header_of({
        f"base_model.model.{'a' * 60}.lora_A.weight": (4, 8), f"base_model.model.{'a' * 60}.lora_B.weight": (8, 4)},
        pad=INLINE_BYTES)),
    "config not JSON": (b"{nope", header_of(BIG)),
    "wrong rank in the weights": (config(r=2), header_of(BIG)),
    "untargeted module": (config(target_modules=["v_proj"]), header_of(BIG)),
    "header lies about its data": (config(), (header_of(BIG)[0], header_of(BIG)[1] + 4)),
    "header not JSON": (config(), (struct.pack("<Q", INLINE_BYTES + 8) + b"{" * (INLINE_BYTES + 8),
                                   INLINE_BYTES + 100)),
}


async def outcome(v: Validator, cfg: bytes, header: tuple[bytes, int]) -> tuple:
    """What a push learns from the three steps: the config's facts, or the first error (class and message)."""
    try:
        facts = await v.config(cfg)
        checked = await v.header(*header)
        await v.adapter(facts, checked)
        return ("ok", facts.r, facts.base_model_name_or_path)
    except AdapterFleetError as err:
        return (type(err).__name__, err.message)


def run(coro):
    return asyncio.run(coro)


def gone(pid: int) -> bool:
    """No such process, not even a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


def test_children_answer_as_threads_do():
    async def both():
        threads, procs = Validator(LIMITS, processes=0), Validator(LIMITS, processes=1)
        try:
            out = {}
            for name, (cfg, header) in CASES.items():
                out[name] = (await outcome(threads, cfg, header), await outcome(procs, cfg, header))
            return out, procs.pool.started
        finally:
            threads.close()
            procs.close()

    results, started = run(both())
    for name, (in_threads, in_children) in results.items():
        assert in_children == in_threads, name
    assert results["valid"][0] == ("ok", 4, "tiny")
    assert results["rank above the limit"][0][0] == "InvalidAdapter"
    assert "backtracks catastrophically" in results["catastrophic pattern"][0][1]
    assert started == 1  # one long-lived child served every step, errors included


def test_a_killed_child_fails_its_step_alone_and_is_replaced():
    async def scenario():
        v = Validator(LIMITS, processes=1)
        try:
            assert (await v.config(config())).r == 4
            [pid] = v.pool.pids
            step = asyncio.ensure_future(v.config(SLOW))
            await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(Unavailable, match="killed by SIGKILL"):
                await step
            again = await outcome(v, config(), header_of(BIG))
            return pid, again, v.pool.pids, v.pool.started
        finally:
            v.close()

    pid, again, pids, started = run(scenario())
    assert again == ("ok", 4, "tiny") and started == 2 and pids != [pid]
    assert gone(pid) and all(gone(p) for p in pids)


def test_a_child_stopped_for_cpu_is_the_budget_error():
    async def scenario():
        v = Validator(LIMITS, processes=1)
        try:
            await v.config(config())
            [pid] = v.pool.pids
            step = asyncio.ensure_future(v.config(SLOW))
            await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGXCPU)  # what the kernel sends at the request's RLIMIT_CPU
            with pytest.raises(InvalidAdapter, match="budget is 2 s of CPU per step") as err:
                await step
            return pid, err.value.message, (await v.config(config())).r
        finally:
            v.close()

    pid, message, r = run(scenario())
    assert message.startswith("adapter_config.json: ") and "fewer or simpler patterns" in message
    assert r == 4 and gone(pid)


def test_no_answer_within_the_wall_limit_kills_the_child(monkeypatch):
    factor, slack = validate_pool.WALL_FACTOR, validate_pool.WALL_SLACK_S

    async def scenario():
        v = Validator(LIMITS, processes=1)
        try:
            await v.config(config())  # a child started and answering, under the default limit (a busy box's start)
            [pid] = v.pool.pids
            monkeypatch.setattr(validate_pool, "WALL_FACTOR", 0.0)
            monkeypatch.setattr(validate_pool, "WALL_SLACK_S", 0.3)  # well below what 8,000 patterns take
            with pytest.raises(InvalidAdapter, match=r"validating it took more than 0\.3 s"):
                await v.config(SLOW)
            monkeypatch.setattr(validate_pool, "WALL_FACTOR", factor)  # the next child's start is not on trial
            monkeypatch.setattr(validate_pool, "WALL_SLACK_S", slack)
            return pid, (await v.config(config())).r, v.pool.started
        finally:
            v.close()

    pid, r, started = run(scenario())
    assert r == 4 and started == 2 and gone(pid)


def test_an_abandoned_step_does_not_answer_the_next_one():
    async def scenario():
        v = Validator(LIMITS, processes=1)
        try:
            await v.config(config())
            [pid] = v.pool.pids
            step = asyncio.ensure_future(v.config(SLOW))
            await asyncio.sleep(0.2)
            step.cancel()  # the push went away mid-step: its child's answer would reach the next step
            with pytest.raises(asyncio.CancelledError):
                await step
            return pid, await v.config(config(r=8))
        finally:
            v.close()

    pid, facts = run(scenario())
    assert facts.r == 8 and gone(pid)


def test_close_reaps_every_child_and_refuses_later_steps():
    async def scenario():
        v = Validator(LIMITS, processes=2)
        first = asyncio.gather(*(v.config(config(r=r)) for r in (1, 2, 3, 4)))
        assert [f.r for f in await first] == [1, 2, 3, 4]
        pids = v.pool.pids
        v.close()
        with pytest.raises(Unavailable, match="stopping"):
            await v.config(config())
        return pids

    pids = run(scenario())
    assert len(pids) == 2 and all(gone(p) for p in pids)


def test_the_final_check_prefers_the_child_that_parsed_its_inputs():
    async def scenario():
        v = Validator(LIMITS, processes=2)
        try:
            cfg, big = await v.config(config()), await v.header(*header_of(BIG))
            await v.adapter(cfg, big)
            return v.pool.started
        finally:
            v.close()

    assert run(scenario()) == 1  # steps one after another: one child, which kept what it parsed


def test_errors_cross_the_wire_typed():
    for err in (InvalidAdapter("bad config"), InvalidArgument("bad field"), ValueError("a bug")):
        meta, parts = read_frame_sync(_stream(encode({"id": 1, **error_meta(err)})))
        assert parts == []
        with pytest.raises(Exception) as raised:
            raise_if_error(meta)
        expected = RuntimeError if isinstance(err, ValueError) else type(err)
        assert type(raised.value) is expected and str(err) in str(raised.value)
    meta, parts = read_frame_sync(_stream(encode({"id": 2, "op": "header"}, [b"\x00" * 5, b"xy"])))
    assert meta["op"] == "header" and parts == [b"\x00" * 5, b"xy"]
    assert read_frame_sync(_stream([])) is None


def _stream(buffers):
    import io

    return io.BytesIO(b"".join(buffers))


def test_a_small_header_is_parsed_in_place():
    header, size = header_of(layers(2))
    assert len(header) <= INLINE_BYTES and header_bytes_needed(header[:8]) == len(header)

    async def scenario():
        v = Validator(LIMITS, processes=1)
        try:
            checked = await v.header(header, size)
            return checked.tensors is not None, v.pool.started
        finally:
            v.close()

    assert run(scenario()) == (True, 0)


def test_store_serve_sets_the_number_of_validator_processes():
    from adapterfleet.cli.main import build_parser
    from adapterfleet.cli.store_serve import config_from_args
    from adapterfleet.store.config import StoreConfig

    def processes(*flags: str) -> int:
        return config_from_args(build_parser().parse_args(["store", "serve", "--insecure", *flags])).validator_processes

    assert processes() == StoreConfig.validator_processes > 0
    assert processes("--validator-processes", "0") == 0


def test_store_serve_sets_the_number_of_blob_lookup_threads():
    from adapterfleet.cli.main import build_parser
    from adapterfleet.cli.store_serve import config_from_args
    from adapterfleet.store.config import StoreConfig

    def lookups(*flags: str) -> int:
        return config_from_args(build_parser().parse_args(["store", "serve", "--insecure", *flags])).blob_lookups

    assert lookups() == StoreConfig.blob_lookups
    assert lookups("--blob-lookups", "7") == 7
