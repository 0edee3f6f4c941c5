"""A latency histogram with fixed buckets: cheap enough to observe once per publication,
read by metrics (as a Prometheus histogram), alerts and the dashboard (as quantiles).

The buckets are fixed, not adaptive: two snapshots can be subtracted to get what
happened between them (an alert's window), and every node's counts add up.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["BUCKETS", "Histogram", "Snapshot"]

#: Upper bounds in seconds, from half a millisecond (one fan-out to a few subscribers) to
#: 2.5 s (a node that has stalled); what is slower lands in the last, infinite bucket.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counts per bucket (not cumulative; the last is above every bound), their sum of
    seconds and their number, at one moment."""

    counts: tuple[int, ...]
    total: float
    count: int

    def since(self, earlier: Snapshot) -> Snapshot:
        """What was observed between ``earlier`` and this snapshot."""
        return Snapshot(
            tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True)),
            self.total - earlier.total,
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (``inf`` past the last
        bound); None when nothing was observed. An upper estimate, never an
        underestimate: what an alert threshold wants."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank and count:
                return bound
        return float("inf")


class Histogram:
    """Observations of durations in seconds."""

    __slots__ = ("_counts", "_total", "count")

    def __init__(self) -> None:
        self._counts = [0] * (len(BUCKETS) + 1)
        self._total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket ("le").
        self._counts[bisect_left(BUCKETS, seconds)] += 1
        self._total += seconds
        self.count += 1

    def snapshot(self) -> Snapshot:
        return Snapshot(tuple(self._counts), self._total, self.count)
