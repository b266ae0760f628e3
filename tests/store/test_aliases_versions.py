"""Aliases (CAS, weighted canaries), yanks and the event stream."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.store.listing import AdapterSummary
from tests.helpers.synthetic import write_adapter


@pytest.fixture
def three_versions(store, tmp_path):
    client = store.client()
    for i in range(1, 4):
        client.push_dir(write_adapter(tmp_path / str(i), seed=i), "demo")
    return client


def code_of(fn, *args, **kw) -> tuple[str, str]:
    with pytest.raises(AdapterFleetError) as err:
        fn(*args, **kw)
    return err.value.code, err.value.message


def test_alias_compare_and_set(three_versions):
    c = three_versions
    c.set_alias("demo", "prod", ((1, 100),), expect=None)  # create only if absent
    code, msg = code_of(c.set_alias, "demo", "prod", ((2, 100),), expect=None)
    assert code == "FAILED_PRECONDITION" and "1:100" in msg
    code, msg = code_of(c.set_alias, "demo", "prod", ((3, 100),), expect=((2, 100),))
    assert code == "FAILED_PRECONDITION" and "retry" in msg
    assert c.resolve("demo@prod").manifest.version == 1  # unchanged by the failed CAS
    c.set_alias("demo", "prod", ((2, 100),), expect=((1, 100),))
    assert c.resolve("demo@prod").manifest.version == 2


def test_concurrent_cas_lets_exactly_one_writer_win(three_versions):
    c = three_versions
    c.set_alias("demo", "prod", ((1, 100),))
    wins, barrier = [], threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        try:
            c.set_alias("demo", "prod", ((2 + i % 2, 100),), expect=((1, 100),))
            wins.append(i)
        except AdapterFleetError as err:
            assert err.code == "FAILED_PRECONDITION"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_weighted_alias_splits_traffic_and_sticks_per_routing_key(three_versions):
    c = three_versions
    c.set_alias("demo", "prod", ((1, 90), (2, 10)))
    counts = Counter(c.resolve("demo@prod").manifest.version for _ in range(400))
    assert set(counts) == {1, 2} and 300 < counts[1] < 390
    sticky = {c.resolve("demo@prod", routing_key="user-42").manifest.version for _ in range(20)}
    assert len(sticky) == 1
    r = c.resolve("demo@prod")
    assert r.alias == "prod" and r.alias_targets == ((1, 90), (2, 10))


@pytest.mark.parametrize("targets,needle", [
    (((1, 50), (2, 40)), "sum to 90"),
    (((1, 50), (1, 50)), "twice"),
    (((), ), "at least one"),
])
def test_bad_alias_targets_are_invalid(three_versions, targets, needle):
    targets = tuple(t for t in targets if t)
    code, msg = code_of(three_versions.set_alias, "demo", "prod", targets)
    assert code == "INVALID_ARGUMENT" and needle in msg


def test_alias_to_missing_version_is_not_found(three_versions):
    code, msg = code_of(three_versions.set_alias, "demo", "prod", ((9, 100),))
    assert code == "NOT_FOUND" and "demo@9" in msg


def test_reserved_alias_names_are_refused(three_versions):
    for alias in ("latest", "sha256x", "3", "Prod"):
        assert code_of(three_versions.set_alias, "demo", alias, ((1, 100),))[0] == "INVALID_ARGUMENT"


def test_delete_alias(three_versions):
    c = three_versions
    c.set_alias("demo", "beta", ((3, 100),))
    assert code_of(c.delete_alias, "demo", "beta", expect=((1, 100),))[0] == "FAILED_PRECONDITION"
    c.delete_alias("demo", "beta", expect=((3, 100),))
    assert code_of(c.resolve, "demo@beta")[0] == "NOT_FOUND"
    assert code_of(c.delete_alias, "demo", "beta")[0] == "NOT_FOUND"


def test_yank_hides_a_version_from_numbers_and_aliases_but_not_digests(three_versions):
    c = three_versions
    c.set_alias("demo", "prod", ((2, 50), (3, 50)))
    code, msg = code_of(c.yank, "demo", 3)
    assert code == "FAILED_PRECONDITION" and "prod" in msg
    yanked = c.yank("demo", 3, force=True)
    assert yanked.yanked
    assert code_of(c.resolve, "demo@3")[0] == "NOT_FOUND"
    assert c.resolve("demo").manifest.version == 2  # latest skips yanked
    assert {c.resolve("demo@prod").manifest.version for _ in range(30)} == {2}  # alias skips yanked targets
    manifest, files = c.fetch(f"demo@{yanked.digest}")
    assert manifest.version == 3 and manifest.yanked and files
    assert code_of(c.set_alias, "demo", "beta", ((3, 100),))[0] == "FAILED_PRECONDITION"
    versions, _ = c.list_versions("demo")
    assert [m.yanked for m in versions] == [False, False, True]


def test_list_adapters_and_versions(store, tmp_path):
    c = store.client()
    c.push_dir(write_adapter(tmp_path / "a", seed=1), "team-a/one", alias="prod")
    c.push_dir(write_adapter(tmp_path / "b", seed=2), "team-b/two")
    names = [a.name for a in c.list_adapters()]
    assert names == ["team-a/one", "team-b/two"]
    [one] = c.list_adapters("team-a/")
    assert one == AdapterSummary("team-a/one", latest_version=1, version_count=1, aliases={"prod": ((1, 100),)})
    assert code_of(c.list_versions, "team-c/none")[0] == "NOT_FOUND"


def test_watch_streams_every_change_and_resumes_from_a_cursor(three_versions):
    c = three_versions
    c.set_alias("demo", "prod", ((1, 100),))
    c.yank("demo", 2)
    events = []
    for e in c.watch(cursor="0"):
        events.append(e)
        if len(events) == 5:
            break
    assert [e.type for e in events] == ["VERSION_PUSHED"] * 3 + ["ALIAS_CHANGED", "VERSION_YANKED"]
    assert [e.version for e in events[:3]] == [1, 2, 3]
    assert events[3].alias == "prod" and events[3].targets == ((1, 100),)
    # resume after the 4th event: only the yank comes again
    resumed = next(iter(c.watch(cursor=events[3].cursor)))
    assert resumed.type == "VERSION_YANKED" and resumed.cursor == events[4].cursor


def test_watch_from_now_sees_only_new_events(three_versions, tmp_path):
    c = three_versions
    got = []
    stream = c.watch(cursor="$", name="demo")
    t = threading.Thread(target=lambda: got.append(next(iter(stream))))
    t.start()
    import time
    time.sleep(0.5)
    c.set_alias("demo", "prod", ((3, 100),))
    t.join(10)
    assert got and got[0].type == "ALIAS_CHANGED" and got[0].targets == ((3, 100),)


def test_an_idle_watch_outlives_the_blocking_read(three_versions):
    """Nothing happens for longer than one blocking XREAD; the stream stays up and then delivers."""
    import time

    c = three_versions
    got = []
    t = threading.Thread(target=lambda: got.append(next(iter(c.watch(cursor="$")))))
    t.start()
    time.sleep(6.5)  # > the store's 5 s block and redis-py's default 5 s read timeout
    c.set_alias("demo", "late", ((1, 100),))
    t.join(10)
    assert got and got[0].alias == "late"
