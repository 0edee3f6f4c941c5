"""Reconnection delays: exponential backoff with full jitter."""

from __future__ import annotations

import random

__all__ = ["Backoff"]

#: The first delay's bound, in seconds: short, so that a blip costs little.
MIN_DELAY = 0.5
#: The largest delay, in seconds: a client that lost its server comes back within this
#: long of the server's return, and a crowd of them still spreads out.
MAX_DELAY = 20.0


class Backoff:
    """Delays for successive attempts: each is uniform in ``[0, bound]``, the bound
    doubling from ``min_delay`` up to ``max_delay``.

    Full jitter (not a fixed delay plus a little noise) spreads out a crowd of clients
    that lost the same server at the same moment.
    """

    def __init__(self, min_delay: float = MIN_DELAY, max_delay: float = MAX_DELAY) -> None:
        if min_delay < 0 or max_delay < min_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one attempt."""
        # The exponent is capped so that 2**attempt stays a small float.
        bound = min(self.max_delay, self.min_delay * 2 ** min(self.attempt, 40))
        self.attempt += 1
        return random.uniform(0, bound)

    def reset(self) -> None:
        """Start again from ``min_delay`` (after a success)."""
        self.attempt = 0
