"""Large files come as parallel ranged GETs or as one GET, whichever an endpoint was measured to serve faster:
ranges first, one GET once, then the faster way, and now and then the other way again."""

from __future__ import annotations

import time

from adapterfleet.store.blob_urls import DirectFetchConfig
from adapterfleet.store.direct_fetch import DirectFetcher
from adapterfleet.store.range_choice import RangeChoice
from tests.helpers.synthetic import write_adapter


def test_ranges_then_one_get_then_the_faster_and_a_reprobe_now_and_then():
    choice = RangeChoice(reprobe_every=4)
    seen = []
    for _ in range(9):
        ranged = choice.ranged("s3")
        seen.append(ranged)
        choice.record("s3", ranged, 100, 3.0 if ranged else 1.0)  # one GET is three times faster here
    assert seen == [True, False, False, False, True, False, False, False, True]  # reprobes at 4 and 8 timed
    assert choice.ranged("elsewhere")  # each endpoint is measured on its own
    assert choice.rates("s3")[False] > choice.rates("s3")[True]


def test_a_slower_way_measured_again_can_win_back():
    choice = RangeChoice(reprobe_every=2)
    choice.record("s3", True, 100, 2.0)   # ranges: 50 B/s
    choice.record("s3", False, 100, 1.0)  # one GET: 100 B/s, the faster
    assert choice.ranged("s3")  # two files timed: the reprobe goes the slower way
    choice.record("s3", True, 100, 0.2)   # 500 B/s this time: averaged to 275 B/s, now ahead
    assert choice.rates("s3") == {True: 275.0, False: 100.0} and choice.ranged("s3")


def _modes(fetcher: DirectFetcher, monkeypatch) -> list[str]:
    used: list[str] = []
    for name in ("_single", "_parallel"):
        real = getattr(fetcher, name)

        def spy(*args, _real=real, _name=name):
            used.append(_name)
            return _real(*args)

        monkeypatch.setattr(fetcher, name, spy)
    return used


def test_a_fetcher_times_both_ways_against_a_real_endpoint(store, tmp_path, monkeypatch):
    from adapterfleet.store.blobs.s3 import S3BlobStore

    src = write_adapter(tmp_path / "big", r=16, hidden=1024, layers=12, seed=4)  # ~3 MB of tensors
    weights = store.client().push_dir(src, "acme/ranges").manifest.file("adapter_model.safetensors")
    url, _ = S3BlobStore(store.config.s3).presign(weights.sha256)
    cfg = DirectFetchConfig(part_bytes=1 << 20, parallel_min_bytes=2 << 20, streams=3)
    with DirectFetcher(cfg) as fetcher:
        used = _modes(fetcher, monkeypatch)
        for _ in range(3):
            got = fetcher.fetch(url, weights.size, weights.sha256, deadline=time.monotonic() + 60)
            assert bytes(got) == (src / "adapter_model.safetensors").read_bytes()
        assert used[:2] == ["_parallel", "_single"] and len(used) == 3
        assert set(fetcher.ranges.rates(url.split("/")[2])) == {True, False}
    with DirectFetcher(DirectFetchConfig(part_bytes=1 << 20, parallel_min_bytes=2 << 20, streams=3,
                                         measure_ranges=False)) as fixed:
        used = _modes(fixed, monkeypatch)
        for _ in range(2):
            fixed.fetch(url, weights.size, weights.sha256, deadline=time.monotonic() + 60)
        assert used == ["_parallel", "_parallel"] and not fixed.ranges.rates(url.split("/")[2])
