"""What can be configured in a hub: channel namespaces and the limits of each connection.

Every limit has a default chosen to be safe for a public server, and the reason is next
to it. docs/protocol.md lists the code a client gets when it passes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..exceptions import InvalidArgument

__all__ = ["ChannelOptions", "HubOptions"]


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """Options of the channels in one namespace (``chat`` for ``chat:*``)."""

    #: Publications kept for history and recovery (0: none), and for how long after the
    #: last one. Recovery works for a client that was away less than this.
    history_size: int = 0
    history_ttl: float = 300.0
    #: Track who is subscribed; ``presence_count_only`` answers presence with counts, for
    #: channels too large to list.
    presence: bool = False
    presence_count_only: bool = False
    #: Push join and leave events to subscribers.
    join_leave: bool = False
    #: Who may publish: subscribed clients, or only the server (HTTP API, Hub.publish).
    publish: Literal["clients", "server"] = "clients"
    #: What a subscriber that cannot keep up gets: disconnected with 3002 (it reconnects
    #: and recovers), or publications dropped (a ``dropped`` push tells it once it can
    #: take one, and it reads them from history).
    slow_consumer: Literal["disconnect", "drop"] = "disconnect"

    def __post_init__(self) -> None:
        if self.history_size < 0 or self.history_ttl <= 0:
            raise InvalidArgument("history_size must be >= 0 and history_ttl > 0")
        if self.publish not in ("clients", "server"):
            raise InvalidArgument("publish is 'clients' or 'server'")
        if self.slow_consumer not in ("disconnect", "drop"):
            raise InvalidArgument("slow_consumer is 'disconnect' or 'drop'")


@dataclass(frozen=True, slots=True)
class HubOptions:
    """Options of a hub. Channels named ``ns:rest`` take ``namespaces[ns]``; a namespace
    that is not configured is refused (error 102). Names without a namespace take
    ``default`` when it is set. When it is not: a hub with no namespaces at all (an
    embedded hub, ``HubOptions()``) takes them with the built-in :class:`ChannelOptions`;
    a hub with namespaces refuses them (102), so that configuring namespaces is a
    complete list of what clients may use, not a list of exceptions to an open
    default."""

    namespaces: Mapping[str, ChannelOptions] = field(default_factory=dict)
    default: ChannelOptions | None = None
    #: Connect without a token (user ""): for demos; off unless configured.
    anonymous: bool = False
    #: Subscriptions per connection: each costs memory and fan-out work.
    max_channels: int = 128
    #: Bytes of a publication's data (as JSON): larger ones get error 113.
    max_data_size: int = 64 * 1024
    #: Publishes per second per connection, with bursts up to ``publish_burst``: a client
    #: past it gets error 111 and the others are not slowed down.
    publish_rate: float = 50.0
    publish_burst: int = 100
    #: Commands per second per connection (every command, publishes included), with
    #: bursts up to ``command_burst``: a reconnecting client resubscribing to
    #: ``max_channels`` channels plus its connect fits in the burst; a client past it
    #: (subscribe/unsubscribe churn floods every watcher of a channel with join and leave
    #: pushes) is disconnected with 3505.
    command_rate: float = 100.0
    command_burst: int = 500
    #: What may wait for a client that does not read (replies and pushes alike), in
    #: bytes and in messages: one MiB is seconds of a busy chat for a slow phone; past it
    #: the channel's slow-consumer policy applies (a reply: disconnected with 3002).
    outbox_max_bytes: int = 1024 * 1024
    outbox_max_messages: int = 1000
    #: Seconds a connection being closed is kept for a client that has not read what
    #: was already written to it (at most the write buffer's high water mark plus one
    #: frame, about 128 KiB), so that it still finds the disconnect push and close frame
    #: (3002 for a slow consumer) when it reads again; then ``close_timeout`` more, and
    #: the connection is dropped. 0: no wait.
    close_linger: float = 30.0
    #: Connections per user: one user opening thousands of tabs or bots is refused (3504).
    max_connections_per_user: int = 100
    #: Seconds a connection may take to send its connect command (3005 after).
    connect_timeout: float = 10.0
    #: Seconds a presence entry lives unless refreshed; the hub refreshes its own every
    #: third of it, so a dead node's clients disappear after at most this long.
    presence_ttl: float = 60.0
    #: Clients in a page of presence when the command or API call names no ``limit``,
    #: and the most it may name: a channel with tens of thousands of clients is read a
    #: bounded page at a time (the answer's ``next_cursor`` asks for the next).
    presence_page_size: int = 1000
    presence_page_max: int = 5000
    #: Seconds an idempotency key is remembered.
    idempotency_window: float = 120.0
    #: Longest channel name: names are keys in every map and in the broker.
    max_channel_length: int = 255

    def channel(self, name: str) -> ChannelOptions | None:
        """The options of a channel, or None when it is outside what is configured."""
        namespace, sep, _ = name.partition(":")
        if sep:
            return self.namespaces.get(namespace)
        if self.default is not None:
            return self.default
        return None if self.namespaces else _BUILT_IN


#: What a plain channel name gets in a hub configured with no namespaces at all.
_BUILT_IN = ChannelOptions()
