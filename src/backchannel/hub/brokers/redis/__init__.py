"""The Redis broker (``pip install backchannel[redis]``): several nodes act as one hub."""

from __future__ import annotations

from .broker import RedisBroker

__all__ = ["RedisBroker"]
