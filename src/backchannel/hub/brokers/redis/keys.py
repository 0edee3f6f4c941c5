"""Names of everything the Redis broker keeps in Redis, all under one ``prefix`` so that
several deployments can share one Redis (docs/howto/cluster.md).

Each module documents the keys it owns; this is the index:

=====================================  ==========================================
``{prefix}:s:{channel}``               stream metadata (:mod:`.history`)
``{prefix}:l:{channel}``               kept publications (:mod:`.history`)
``{prefix}:i:{channel}:{key}``         an idempotency key (:mod:`.history`)
``{prefix}:c:{channel}``               the channel's pub/sub channel (:mod:`.broker`)
``{prefix}:ctl``                       commands for every node (:mod:`.broker`)
``{prefix}:p:{channel}``               presence expiries (:mod:`.presence`)
``{prefix}:q:{channel}``               presence details (:mod:`.presence`)
``{prefix}:m:{channel}``               presence page order (:mod:`.presence`)
``{prefix}:o:{channel}``               nodes holding the channel (:mod:`.occupancy`)
``{prefix}:lp:{sid}``                  the node holding a long-poll session (:mod:`.relay`)
``{prefix}:alive:{node}``              a node is up (:mod:`.relay`)
``{prefix}:n:{node}``                  a node's pub/sub channel (:mod:`.relay`)
=====================================  ==========================================

The kind comes right after the prefix, so a channel name containing ``:`` cannot make
one kind of key look like another.

Expiry is decided by timestamps stored in the data, read against the broker's clock
(wall-clock time by default, shared by the nodes); Redis TTLs only collect what nobody
reads any more, :data:`GC_SLACK_MS` after its logical expiry.
"""

from __future__ import annotations

__all__ = ["GC_SLACK_MS", "Keys"]

#: Extra time (ms) Redis keeps a key after its logical expiry: the data says when it
#: expires; the Redis TTL only frees keys nobody touches again. A minute covers clock
#: differences between nodes and a node reading just as the data expires.
GC_SLACK_MS = 60_000


class Keys:
    """The key and pub/sub names of one deployment (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: The pub/sub channel of commands for every node.
        self.control = f"{prefix}:ctl"
        self._channel_prefix = f"{prefix}:c:"

    def _name(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def stream(self, channel: str) -> str:
        return self._name("s", channel)

    def log(self, channel: str) -> str:
        return self._name("l", channel)

    def idempotency(self, channel: str, key: str) -> str:
        return self._name("i", f"{channel}:{key}")

    def channel(self, channel: str) -> str:
        """The pub/sub channel carrying ``channel``'s publications, joins and leaves."""
        return self._channel_prefix + channel

    def channel_of(self, name: str) -> str | None:
        """The channel whose pub/sub channel is ``name``; None for another name."""
        if name.startswith(self._channel_prefix):
            return name[len(self._channel_prefix) :]
        return None

    def presence(self, channel: str) -> str:
        return self._name("p", channel)

    def presence_info(self, channel: str) -> str:
        return self._name("q", channel)

    def presence_order(self, channel: str) -> str:
        return self._name("m", channel)

    def occupancy(self, channel: str) -> str:
        return self._name("o", channel)

    def session(self, sid: str) -> str:
        return self._name("lp", sid)

    def alive(self, node: str) -> str:
        return self._name("alive", node)

    def node(self, node: str) -> str:
        """The pub/sub channel on which ``node`` gets forwarded requests and answers."""
        return self._name("n", node)
