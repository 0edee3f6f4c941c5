"""Names of everything the Redis broker keeps in Redis, all under one ``prefix`` so that
several deployments can share one Redis (docs/howto/cluster.md).

Each module documents the keys it owns; this is the index:

=====================================  ==========================================
``{prefix}:s:{{channel}}``             stream metadata (:mod:`.history`)
``{prefix}:l:{{channel}}``             kept publications (:mod:`.history`)
``{prefix}:i:{{channel}}:{key}``       an idempotency key (:mod:`.history`)
``{prefix}:c:{{channel}}``             the channel's pub/sub channel (:mod:`.broker`)
``{prefix}:ctl``                       commands for every node (:mod:`.broker`)
``{prefix}:p:{{channel}}``             presence expiries (:mod:`.presence`)
``{prefix}:q:{{channel}}``             presence details (:mod:`.presence`)
``{prefix}:m:{{channel}}``             presence page order (:mod:`.presence`)
``{prefix}:o:{{channel}}``             nodes holding the channel (:mod:`.occupancy`)
``{prefix}:lp:{sid}``                  the node holding a long-poll session (:mod:`.relay`)
``{prefix}:alive:{node}``              a node is up (:mod:`.relay`)
``{prefix}:n:{node}``                  a node's pub/sub channel (:mod:`.relay`)
=====================================  ==========================================

Every name of one channel carries the channel as a Redis Cluster *hash tag*, between
literal braces (``backchannel:s:{room}``): Redis Cluster hashes only what is between the
first ``{`` and the next ``}``, so all of a channel's keys and its pub/sub channel live
in one hash slot, on one shard, and each Lua script touches one slot (a script's keys
must; cluster-spec "Hash tags"). A channel name that would end the tag early (it
contains ``}``) or make it empty gets a tag made of a digest of the name instead,
followed by the name itself (``backchannel:s:{#3f2a...}a}b``), so the name stays unique
and still one slot. Node-wide names (``ctl``, ``lp``, ``alive``, ``n``) are one key or
channel each, so every command on them is on one slot too. The prefix must not contain
braces (a tag in it would put every key in one slot).

The kind comes right after the prefix, so a channel name containing ``:`` cannot make
one kind of key look like another.

Expiry is decided by timestamps stored in the data, read against the broker's clock
(wall-clock time by default, shared by the nodes); Redis TTLs only collect what nobody
reads any more, :data:`GC_SLACK_MS` after its logical expiry.
"""

from __future__ import annotations

import hashlib

__all__ = ["GC_SLACK_MS", "Keys"]

#: Extra time (ms) Redis keeps a key after its logical expiry: the data says when it
#: expires; the Redis TTL only frees keys nobody touches again. A minute covers clock
#: differences between nodes and a node reading just as the data expires.
GC_SLACK_MS = 60_000


class Keys:
    """The key and pub/sub names of one deployment (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the broker's prefix must not contain '{' or '}'")
        self.prefix = prefix
        #: The pub/sub channel of commands for every node.
        self.control = f"{prefix}:ctl"
        self._channel_prefix = f"{prefix}:c:"

    def _name(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def _tagged(self, kind: str, channel: str) -> str:
        return f"{self.prefix}:{kind}:{tagged(channel)}"

    def stream(self, channel: str) -> str:
        return self._tagged("s", channel)

    def log(self, channel: str) -> str:
        return self._tagged("l", channel)

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self._tagged('i', channel)}:{key}"

    def channel(self, channel: str) -> str:
        """The pub/sub channel carrying ``channel``'s publications, joins and leaves."""
        return self._channel_prefix + tagged(channel)

    def channel_of(self, name: str) -> str | None:
        """The channel whose pub/sub channel is ``name``; None for another name."""
        if not name.startswith(self._channel_prefix):
            return None
        rest = name[len(self._channel_prefix) :]
        if rest.startswith("{#"):
            end = rest.find("}")
            return None if end < 0 else rest[end + 1 :]
        if rest.startswith("{") and rest.endswith("}"):
            return rest[1:-1]
        return None

    def presence(self, channel: str) -> str:
        return self._tagged("p", channel)

    def presence_info(self, channel: str) -> str:
        return self._tagged("q", channel)

    def presence_order(self, channel: str) -> str:
        return self._tagged("m", channel)

    def occupancy(self, channel: str) -> str:
        return self._tagged("o", channel)

    def session(self, sid: str) -> str:
        return self._name("lp", sid)

    def alive(self, node: str) -> str:
        return self._name("alive", node)

    def node(self, node: str) -> str:
        """The pub/sub channel on which ``node`` gets forwarded requests and answers."""
        return self._name("n", node)


def tagged(channel: str) -> str:
    """``channel`` as a Redis Cluster hash tag (see the module docstring): ``{channel}``,
    or, when the name contains ``}``, is empty or starts with ``#``, a digest tag followed
    by the name (names starting with ``#`` take this form so that no plain tag can look
    like a digest one)."""
    if channel and "}" not in channel and not channel.startswith("#"):
        return f"{{{channel}}}"
    digest = hashlib.sha1(channel.encode(), usedforsecurity=False).hexdigest()
    return f"{{#{digest}}}{channel}"
