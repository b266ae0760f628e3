"""Exactly one store process drives a rollout; when it dies another one continues from the same step. Two store
processes on one Redis; the one that drives is killed without handing its lease over (like kill -9)."""

from __future__ import annotations

from adapterfleet.sdk.rollouts import Rollouts
from adapterfleet.store.client import StoreClient
from tests.rollout.conftest import StoreProcess, rollout_store_config, wait_for


def test_the_rollout_survives_the_store_process_that_drove_it(redis_server, s3_server, synthetic, tmp_path):
    _, good, _ = synthetic
    cfg = rollout_store_config(redis_server, s3_server, tmp_path)
    stores = [StoreProcess(cfg), StoreProcess(cfg)]
    try:
        with StoreClient(stores[0].address) as client:
            for d in good[:2]:
                client.push_dir(d, "acme/ha")
            client.set_alias("acme/ha", "prod", ((1, 100),))
        with Rollouts(stores[0].address) as r0, Rollouts(stores[1].address) as r1:
            r0.start("acme/ha", "prod", to=2, steps="10,20,50,100", interval="1.5s", min_requests=0, warm=False)
            s = wait_for(lambda: (s := r1.status("acme/ha", "prod")).step == 1 and s, what="step 2")
            drivers = [p for p in stores if p.controller.driving()]
            assert len(drivers) == 1  # exactly one process drives it
            driver = drivers[0]
            assert s.owner == driver.controller.owner
            step_at_kill = s.step
            driver.crash()
            other = stores[1 - stores.index(driver)]
            survivor = r1 if other is stores[1] else r0
            done = wait_for(lambda: (s := survivor.status("acme/ha", "prod")).state == "done" and s, timeout=30,
                            what="done after the takeover")
        kinds = [h["kind"] for h in done.history]
        assert "taken_over" in kinds
        taken = done.history[kinds.index("taken_over")]
        steps_after = [h["detail"] for h in done.history[kinds.index("taken_over"):] if h["kind"] in ("step", "done")]
        # it continued from the step it was at, not from the start
        assert f"continues at step {step_at_kill + 1}" in taken["detail"] or f"at step {step_at_kill + 2}" in \
            taken["detail"], taken
        assert all("step 1 " not in d and "step 2 " not in d for d in steps_after), steps_after
        assert sum(k == "step" for k in kinds) == 3 and kinds.count("done") == 1  # each step once
        assert done.weights == {2: 100} and done.owner == ""
        assert other.controller.takeovers == 1
        with StoreClient(other.address) as client:
            assert client.resolve("acme/ha@prod").manifest.version == 2
    finally:
        for p in stores:
            p.stop()


def test_a_move_the_dead_driver_began_is_finished_by_the_next_one(redis_server, s3_server, synthetic, tmp_path,
                                                                  redis_client):
    """The driver recorded a pending move and moved the alias, then died before recording the step: its successor
    completes the move (it does not mistake it for a manual move, and does not move again)."""
    import json

    _, good, _ = synthetic
    cfg = rollout_store_config(redis_server, s3_server, tmp_path)
    stores = [StoreProcess(cfg), StoreProcess(cfg)]
    try:
        with StoreClient(stores[0].address) as client:
            for d in good[:2]:
                client.push_dir(d, "acme/pending")
            client.set_alias("acme/pending", "prod", ((1, 100),))
            with Rollouts(stores[0].address) as r0:
                r0.start("acme/pending", "prod", to=2, steps="50,100", interval="1h", min_requests=10, warm=False)
                wait_for(lambda: r0.status("acme/pending", "prod").step == 0, what="step 1")
        lease = f"{cfg.redis_prefix}rollout:lease:acme/pending@prod"
        holder = redis_client.get(lease).decode()  # the lease says who drives
        driver = next(p for p in stores if p.controller.owner == holder)
        survivor = stores[1 - stores.index(driver)]
        with StoreClient(survivor.address) as client, Rollouts(survivor.address) as r1:
            driver.crash()
            # the dead driver's lease holds while the test stages what it left, however slow the box, and then
            # expires: nobody can take over (or write the record) half-way through the staging
            redis_client.set(lease, driver.controller.owner, px=120_000)
            # what the dead driver left: the final move recorded as pending, and the alias already moved
            key = f"{cfg.redis_prefix}rollouts"
            record = json.loads(redis_client.hget(key, "acme/pending@prod"))
            record["pending"] = {"targets": "2:100", "kind": "done", "detail": "step 2 of 2: v2 at 100%; done",
                                 "everywhere": False, "changes": {"state": "done", "step": 1}}
            redis_client.hset(key, "acme/pending@prod", json.dumps(record))
            client.set_alias("acme/pending", "prod", ((2, 100),), expect=((1, 50), (2, 50)))
            redis_client.delete(lease)
            done = wait_for(lambda: (s := r1.status("acme/pending", "prod")).state != "running" and s,
                            timeout=30, what="finished by the successor")
            assert done.state == "done" and done.weights == {2: 100} and not done.reason, (done.reason, done.history)
            assert [h["kind"] for h in done.history][-2:] == ["taken_over", "done"]
            assert client.resolve("acme/pending@prod").alias_targets == ((2, 100),)
    finally:
        for p in stores:
            p.stop()
