"""AdapterStore against a real store: round trips, the verified local cache, aliases, events."""

from __future__ import annotations

import threading
import warnings

import pytest

from adapterfleet.common.errors import FailedPrecondition, NotFound
from adapterfleet.sdk.store import AdapterStore
from tests.helpers.models import make_base_model, make_peft_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk_store")
    base = make_base_model("llama", root / "base", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [make_peft_adapter(base, root / f"a{i}", seed=i, r=4, target_modules=["q_proj", "v_proj"])
                for i in (1, 2)]


@pytest.fixture
def sdk(store, tmp_path):
    with AdapterStore(store.address, timeout=30, cache_dir=tmp_path / "cache") as s:
        yield s


class Spy:
    """Counts calls of one method of the underlying StoreClient."""

    def __init__(self, monkeypatch, client, method: str):
        self.calls = 0
        real = getattr(client, method)

        def wrapped(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(client, method, wrapped)


def same_files(a, b) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    return names == sorted(p.name for p in b.iterdir() if p.is_file() and not p.name.startswith(".")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_push_then_pull_is_byte_identical(sdk, adapters, tmp_path):
    outcome = sdk.push(adapters[0], "acme/sum", alias="prod")
    assert outcome.created and outcome.manifest.version == 1
    cached = sdk.pull("acme/sum@prod")
    assert cached == sdk.cache_dir / "sha256" / outcome.manifest.digest.removeprefix("sha256:")
    assert same_files(adapters[0], cached)
    explicit = sdk.pull("acme/sum@1", tmp_path / "out")
    assert explicit == tmp_path / "out" and same_files(adapters[0], explicit)
    local = sdk.pull_adapter("acme/sum")
    assert local.key == str(outcome.manifest.key) and local.path == cached


def test_a_cache_hit_does_not_download_and_a_digest_hit_needs_no_store(sdk, adapters, monkeypatch):
    key = str(sdk.push(adapters[0], "acme/sum").manifest.key)
    pulls, resolves = Spy(monkeypatch, sdk.client, "pull"), Spy(monkeypatch, sdk.client, "resolve")
    first = sdk.pull("acme/sum")
    mtime = (first / "adapter_model.safetensors").stat().st_mtime_ns
    assert sdk.pull("acme/sum@1") == first and pulls.calls == 1
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    resolves.calls = 0
    assert sdk.pull(key) == first and (pulls.calls, resolves.calls) == (1, 0)  # cached manifest, no network


def test_a_tampered_or_missing_cached_file_is_pulled_again(sdk, adapters, monkeypatch):
    key = str(sdk.push(adapters[0], "acme/sum").manifest.key)
    pulls = Spy(monkeypatch, sdk.client, "pull")
    path = sdk.pull(key)
    weights = path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(data))
    assert sdk.pull(key) == path and pulls.calls == 2
    assert same_files(adapters[0], path)
    (path / "adapter_config.json").unlink()
    assert sdk.pull("acme/sum") == path and pulls.calls == 3
    assert same_files(adapters[0], path)


def test_concurrent_pulls_of_one_key_download_once_and_agree(store, adapters, tmp_path, monkeypatch):
    cache = tmp_path / "shared-cache"
    clients = [AdapterStore(store.address, timeout=30, cache_dir=cache) for _ in range(4)]
    clients[0].push(adapters[1], "acme/qa")
    spies = [Spy(monkeypatch, c.client, "pull") for c in clients]
    start, results, errors = threading.Barrier(len(clients)), [], []

    def pull(c):
        start.wait()
        try:
            results.append(c.pull("acme/qa"))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=pull, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()
    assert not errors and len(set(results)) == 1
    assert sum(s.calls for s in spies) == 1
    assert same_files(adapters[1], results[0])


def test_aliases_resolve_and_listings(sdk, adapters):
    v1 = sdk.push(adapters[0], "acme/sum").manifest
    v2 = sdk.push(adapters[1], "acme/sum").manifest
    sdk.set_alias("acme/sum", "prod", 1, expect=None)
    assert sdk.resolve("acme/sum@prod").key == str(v1.key)
    with pytest.raises(FailedPrecondition, match="prod"):
        sdk.set_alias("acme/sum", "prod", 2, expect=2)  # compare-and-set: prod holds 1, not 2
    sdk.set_alias("acme/sum", "prod", {1: 50, 2: 50}, expect=1)
    picks = {sdk.resolve("acme/sum@prod", routing_key="user-7").manifest.version for _ in range(10)}
    assert len(picks) == 1  # sticky per routing key
    assert sdk.resolve("acme/sum").key == str(v2.key)  # latest
    listing = sdk.versions("acme/sum")
    assert [m.version for m in listing.versions] == [1, 2]
    assert listing.aliases == {"prod": ((1, 50), (2, 50))}
    [summary] = sdk.adapters("acme/")
    assert (summary.name, summary.latest_version, summary.version_count) == ("acme/sum", 2, 2)
    assert summary.aliases == {"prod": ((1, 50), (2, 50))}
    sdk.delete_alias("acme/sum", "prod", expect=[(1, 50), (2, 50)])
    with pytest.raises(NotFound):
        sdk.resolve("acme/sum@prod")
    assert sdk.yank("acme/sum", 2).yanked
    assert sdk.resolve("acme/sum").manifest.version == 1
    with pytest.raises(NotFound):
        sdk.pull("acme/nothing")


def test_watch_yields_the_push_event(sdk, adapters):
    manifest = sdk.push(adapters[0], "acme/watched", alias="prod").manifest
    events = sdk.watch(cursor="0", name="acme/watched")
    event = next(events)
    events.close()
    assert (event.type, event.name, event.version, event.digest) == ("VERSION_PUSHED", "acme/watched", 1,
                                                                       manifest.digest)
