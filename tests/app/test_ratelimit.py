"""Token buckets per address."""

from __future__ import annotations

from backchannel.app.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    # Another address has its own bucket.
    assert limiter.allow("b")
    clock.now = 0.5  # one token back at 2 per second
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now = 100.0  # refilled to the burst, not beyond
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]


def test_memory_is_bounded_by_forgetting_the_least_recent_address() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, max_keys=3, clock=clock)
    for key in "abcd":
        assert limiter.allow(key)
    assert len(limiter._buckets) == 3
    assert not limiter.allow("d")  # still remembered: empty
    assert limiter.allow("a")  # forgotten: a full bucket again
