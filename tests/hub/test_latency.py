"""The fixed-bucket latency histogram: counts, windows and quantile estimates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backchannel.hub.latency import BUCKETS, Histogram


def test_a_value_on_a_bound_counts_in_that_bound_and_past_the_last_in_the_last() -> None:
    histogram = Histogram()
    histogram.observe(0.001)
    histogram.observe(100.0)
    counts = histogram.snapshot().counts
    assert counts[BUCKETS.index(0.001)] == 1 and counts[-1] == 1 and sum(counts) == 2


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=200), st.floats(0.01, 1))
def test_a_quantile_is_never_below_the_true_value(values: list[float], q: float) -> None:
    histogram = Histogram()
    for value in values:
        histogram.observe(value)
    estimate = histogram.snapshot().quantile(q)
    ordered = sorted(values)
    true = ordered[max(0, int(-(-q * len(ordered) // 1)) - 1)]  # the ceil(q*n)-th value
    assert estimate is not None and estimate >= true


def test_a_window_is_the_difference_of_two_snapshots() -> None:
    histogram = Histogram()
    histogram.observe(2.0)
    before = histogram.snapshot()
    assert before.since(before).quantile(0.99) is None
    for _ in range(99):
        histogram.observe(0.0001)
    histogram.observe(0.2)
    window = histogram.snapshot().since(before)
    assert window.count == 100 and abs(window.total - (99 * 0.0001 + 0.2)) < 1e-9
    # The p99 of the window: the 99th of 100 values, in the first bucket; the old slow
    # one before the window does not count.
    assert window.quantile(0.99) == BUCKETS[0]
    assert window.quantile(1.0) == 0.25
