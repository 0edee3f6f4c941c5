"""The Redis broker (``pip install -e '.[redis]'``): several nodes act as one hub.

:class:`RedisBroker` (:mod:`.broker`) is the whole public API; its parts are
:mod:`.history`, :mod:`.presence`, :mod:`.occupancy` and :mod:`.relay`, with key names
in :mod:`.keys`, value encoding in :mod:`.codec` and "Redis is down" in :mod:`.errors`.
"""

from __future__ import annotations

from .broker import RedisBroker

__all__ = ["RedisBroker"]
