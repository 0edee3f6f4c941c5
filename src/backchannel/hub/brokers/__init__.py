"""Brokers: how publications, joins, leaves and control messages reach every node, and
where history and presence are kept.

:class:`MemoryBroker` (one process) is the default; the Redis broker
(``backchannel.hub.brokers.redis``, the ``redis`` extra) lets several nodes act as one.
Every broker passes one contract suite (``tests/hub/brokers/broker_contract.py``).
"""

from __future__ import annotations

from .base import (
    Broker,
    BrokerHandler,
    HistoryOptions,
    HistoryResult,
    PresencePage,
    PublishResult,
)
from .memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerHandler",
    "HistoryOptions",
    "HistoryResult",
    "MemoryBroker",
    "PresencePage",
    "PublishResult",
]
