"""What a broker's calls to its backing store cost: counts, errors and latency by
operation, for metrics and alerts.

A broker that keeps everything in this process (the memory broker) makes no calls and
records nothing. The Redis broker records each round trip (a command, a pipeline, a
script) where it turns Redis errors into ``BrokerUnavailable``.
"""

from __future__ import annotations

from collections import Counter

from ..latency import Histogram

__all__ = ["BrokerCalls"]


class BrokerCalls:
    """Calls by operation name (``publish``, ``history``, ``presence_add``...): how many,
    how many failed, and a latency histogram of each."""

    __slots__ = ("count", "errors", "latency")

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, Histogram] = {}

    def record(self, operation: str, seconds: float, *, failed: bool) -> None:
        self.count[operation] += 1
        if failed:
            self.errors[operation] += 1
        histogram = self.latency.get(operation)
        if histogram is None:
            histogram = self.latency[operation] = Histogram()
        histogram.observe(seconds)
