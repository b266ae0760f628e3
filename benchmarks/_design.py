"""The run design the side-by-side benchmarks share: orders that balance carry-over, and an interval for a median.

On a 2-core box whose other work comes and goes, the path that runs first in every round, or right after the one
that leaves the disk or the CPU busy, is measured under different conditions from the others; and the median of
per-round differences is only as good as the spread of the rounds.
"""

from __future__ import annotations

import math


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` paths in which each path runs first equally often and follows every other path equally often
    (a Williams design): a path whose processes still wind down after its turn (a proxy closing 100 streams, moto
    writing 100 MB to disk) then slows each of the others alike instead of always the same one. ``2n`` orders for an
    odd ``n``, ``n`` for an even one."""
    first = [0]
    for i in range(1, n):
        first.append((i + 1) // 2 if i % 2 else n - i // 2)
    rows = [[(x + k) % n for x in first] for k in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``xs`` (the sign test's order statistics); (-inf,
    inf) when there are too few values for ``level``."""
    xs, n = sorted(xs), len(xs)
    below, k = 0.0, 0  # P(Binomial(n, 1/2) <= k - 1) stays within (1 - level) / 2
    while k < n // 2 and below + math.comb(n, k) / 2 ** n <= (1 - level) / 2:
        below += math.comb(n, k) / 2 ** n
        k += 1
    if k == 0:
        return float("-inf"), float("inf")
    return xs[k - 1], xs[n - k]
