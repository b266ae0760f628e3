"""A store's validator process dies mid-push (SIGKILL, as the OOM killer would): that push fails UNAVAILABLE, every
other call is answered, the next push gets a fresh process, and stopping the store leaves no process behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.store.client import StoreClient
from tests.helpers.servers import start_store
from tests.helpers.synthetic import lora_config, write_adapter


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_a_validator_process_killed_mid_push_fails_that_push_alone(store_config, tmp_path):
    address, core, stop = start_store(store_config)
    pool = core.validator.pool
    assert pool is not None  # the default: validator processes
    c, other = StoreClient(address), StoreClient(address)
    stopped = False
    try:
        key = str(c.push_dir(write_adapter(tmp_path / "ok"), "t/ok").manifest.key)
        [pid] = pool.pids  # one push, one child: the steps ran one after another
        slow = lora_config(modules_to_save=[f"keep_{i}" for i in range(4000)])  # seconds of pattern compiling
        outcome: list[BaseException | None] = []

        def push_slow() -> None:
            try:
                c.push_dir(write_adapter(tmp_path / "slow", config=slow), "t/slow")
                outcome.append(None)
            except AdapterFleetError as err:
                outcome.append(err)

        pusher = threading.Thread(target=push_slow)
        before = cpu_ticks(pid)
        pusher.start()
        deadline = time.monotonic() + 60
        while cpu_ticks(pid) < before + 10 and time.monotonic() < deadline:  # the child is compiling its patterns
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        assert other.resolve("t/ok@1").key == key  # answered meanwhile
        pusher.join(60)
        [err] = outcome
        assert err is not None and err.code == "UNAVAILABLE" and "validator process was killed by SIGKILL" in str(err)
        with pytest.raises(AdapterFleetError) as missing:
            other.resolve("t/slow")
        assert missing.value.code == "NOT_FOUND"

        again = c.push_dir(write_adapter(tmp_path / "again", seed=1), "t/ok")
        assert again.created and again.manifest.version == 2
        children = pool.pids
        assert children and pid not in children
        c.close()
        other.close()
        stop()
        stopped = True
        assert not any(Path(f"/proc/{p}").exists() for p in [pid, *children])  # none left, not even a zombie
    finally:
        if not stopped:
            c.close()
            other.close()
            stop()
