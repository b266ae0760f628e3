"""The run design the side-by-side benchmarks rely on (benchmarks/_design.py): if these orders were not balanced,
or the interval were too narrow, a benchmark's verdict would carry the bias or the noise it claims to remove."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from itertools import pairwise

import pytest

from benchmarks._design import balanced_orders, median_ci


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_each_path_runs_in_each_position_and_after_each_other_path_equally_often(n):
    orders = balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    positions = Counter((pos, path) for order in orders for pos, path in enumerate(order))
    assert set(positions.values()) == {len(orders) // n}
    follows = Counter((a, b) for order in orders for a, b in pairwise(order))
    assert len(follows) == n * (n - 1)  # every ordered pair of different paths...
    assert len(set(follows.values())) == 1  # ...equally often


def test_the_interval_covers_the_median_as_often_as_it_claims():
    rng = random.Random(7)
    trials, missed = 2000, 0
    for _ in range(trials):
        xs = [rng.gauss(1.0, 0.3) for _ in range(30)]  # true median 1.0
        lo, hi = median_ci(xs)
        assert lo <= statistics.median(xs) <= hi
        missed += not lo <= 1.0 <= hi
    assert missed / trials <= 0.05 + 0.015  # 95% (the sign test's is conservative), allowing for the sampling


def test_too_few_rounds_give_no_interval_and_more_rounds_a_narrower_one():
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == (float("-inf"), float("inf"))  # 2 * 1/32 > 0.05
    assert median_ci([float(x) for x in range(6)]) == (0.0, 5.0)
    rng = random.Random(3)
    widths = []
    for n in (30, 120):
        lo, hi = median_ci([rng.gauss(0, 1) for _ in range(n)])
        widths.append(hi - lo)
    assert widths[1] < widths[0]
