"""adapterfleet.store.targets: the one alias-target contract (parse, check, coerce, choose), and the store, the SDK
and a router-side choice agreeing on the same cases."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store import targets as T
from tests.helpers.synthetic import write_adapter

GOOD = [("3", ((3, 100),)), ("3:90,4:10", ((3, 90), (4, 10))), (" 4:10 , 3:90 ", ((3, 90), (4, 10))),
        ("1:0,2:100", ((1, 0), (2, 100)))]
BAD = [("", "empty"), ("3:50,4:40", "sum to 90"), ("3:50,3:50", "twice"), ("x", "not a whole number"),
       ("3:90,4", "no weight"), ("0", "positive"), ("3:-5,4:105", "not a whole number"), ("²", "not a whole number"),
       (",".join(f"{i}:0" for i in range(1, 18)), "at most 16")]


@pytest.mark.parametrize("text,want", GOOD)
def test_parse_accepts_the_documented_syntax(text, want):
    assert T.parse(text) == want
    assert T.decode(T.encode(want)) == want


@pytest.mark.parametrize("text,needle", BAD)
def test_parse_refuses_with_a_message_that_names_the_rule(text, needle):
    with pytest.raises(InvalidArgument) as err:
        T.parse(text)
    assert needle in err.value.message


@pytest.mark.parametrize("given,want", [(3, ((3, 100),)), ({4: 10, 3: 90}, ((3, 90), (4, 10))),
                                        ([(3, 90), (4, 10)], ((3, 90), (4, 10)))])
def test_sdk_forms_coerce_to_the_same_targets(given, want):
    assert T.coerce(given) == want


@pytest.mark.parametrize("given", [True, {3: 50}, [(3, 50), (3, 50)]])
def test_sdk_forms_are_checked_like_the_cli(given):
    with pytest.raises(InvalidArgument):
        T.coerce(given)


def test_choose_is_sticky_per_routing_key_and_weighted_without_one():
    live = (T.LiveTarget(1, 90, "a@sha256:1"), T.LiveTarget(2, 10, "a@sha256:2"))
    rng = random.Random(0)
    assert len({T.choose(live, "user-42", rng).key for _ in range(50)}) == 1
    counts = Counter(T.choose(live, "", rng).version for _ in range(2000))
    assert 1700 < counts[1] < 1900
    # pairs and LiveTargets choose alike, so the store and a router agree for every key
    pairs = tuple((t.version, t.weight) for t in live)
    for i in range(200):
        assert T.choose(pairs, f"k{i}", rng)[0] == T.choose(live, f"k{i}", rng).version


def test_a_yanked_target_is_dropped_and_survivors_keep_their_keys():
    full = ((1, 50), (2, 30), (3, 20))
    live = tuple((v, w) for v, w in full if v != 2)
    rng = random.Random(0)
    stayed = [k for k in (f"k{i}" for i in range(300)) if T.choose(full, k, rng)[0] == 1]
    # with a target gone the points shift, but every key still lands on a live version
    assert {T.choose(live, k, rng)[0] for k in stayed} <= {1, 3}


def test_the_store_and_a_client_side_choice_agree_on_every_routing_key(store, tmp_path):
    c = store.client()
    for i in range(1, 4):
        c.push_dir(write_adapter(tmp_path / str(i), seed=i), "demo")
    c.set_alias("demo", "prod", T.parse("1:50,2:30,3:20"))
    c.yank("demo", 2, force=True)
    r = c.resolve("demo@prod")
    assert [(t.version, t.weight) for t in r.targets] == [(1, 50), (3, 20)]  # yanked dropped, weights kept
    assert r.alias_targets == ((1, 50), (2, 30), (3, 20))                      # the alias as set
    keys = {m.version: str(m.key) for m in c.list_versions("demo")[0]}
    assert {t.version: t.key for t in r.targets} == {1: keys[1], 3: keys[3]}
    rng = random.Random(0)
    for i in range(40):
        by_store = c.resolve("demo@prod", routing_key=f"user-{i}").manifest.version
        assert by_store == T.choose(r.targets, f"user-{i}", rng).version


def test_a_version_ref_resolves_to_one_target_with_its_key(store, tmp_path):
    c = store.client()
    m = c.push_dir(write_adapter(tmp_path / "a", seed=1), "demo").manifest
    for ref in ("demo", "demo@1", f"demo@{m.digest}"):
        assert [(t.version, t.weight, t.key) for t in c.resolve(ref).targets] == [(1, 100, str(m.key))]
