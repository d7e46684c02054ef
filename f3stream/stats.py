"""The one percentile every latency figure of the package uses (server metrics, ``f3stream
stream``, ``f3stream bench``, ``f3stream mic``, the benchmarks), so figures of different
commands are comparable."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank percentile (q in [0, 100]): the smallest observed value that at least
    ``q`` % of the values do not exceed, i.e. the ``ceil(q / 100 * n)``-th smallest (the
    minimum for q = 0); None when there are no values.

    Why nearest rank rather than interpolation between ranks (numpy's default): a latency
    figure should be a latency that was observed, and a tail figure should not be lowered by
    averaging with a faster neighbour (p99 of 100 samples is the 99th, p100 the maximum);
    it is also what a reader can check by sorting a log. For the sample sizes reported (a few
    hundred values and more) the two differ by at most one rank.
    """
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


__all__ = ["percentile"]
