"""The registry of this node: its sessions, their users, and who is subscribed to what.

One owner for this state: only the registry adds or removes a session, a user's
session or a subscription (it keeps ``Session.subscriptions`` and the channel map in
step), and it does the local fan-out. It neither waits nor talks to the broker: the hub
decides when, the registry keeps the books.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .outbox import text_size
from .session import Session
from .subscription import Subscription
from .transports.base import Transport

__all__ = ["Registry", "Slow"]

#: Publications held for a subscriber while its subscribe reads history: a subscribe
#: whose history read stalls must not grow memory (past it: the slow-consumer policy).
MAX_PENDING = 1000


@dataclass(slots=True)
class Slow:
    """A subscriber that could not take a publication: its outbox was full."""

    session: Session
    subscription: Subscription


class Registry:
    """Sessions, users and channels of this node (see the module docstring)."""

    __slots__ = ("channels", "deliveries", "sessions", "users")

    def __init__(self) -> None:
        self.sessions: set[Session] = set()
        #: Connected sessions by user.
        self.users: dict[str, set[Session]] = {}
        #: Sessions subscribed to each channel (insertion-ordered).
        self.channels: dict[str, dict[Session, Subscription]] = {}
        #: Publications, joins and leaves handed to subscribers' transports or outboxes.
        self.deliveries = 0

    # Sessions and users.

    def add_session(self, session: Session) -> None:
        self.sessions.add(session)

    def remove_session(self, session: Session) -> list[Subscription]:
        """Forget a session: its user entry and its subscriptions (returned, so the hub
        can leave the channels on the broker)."""
        self.sessions.discard(session)
        users = self.users.get(session.user)
        if users is not None:
            users.discard(session)
            if not users:
                del self.users[session.user]
        removed = []
        for channel in list(session.subscriptions):
            sub = self.remove_subscription(session, channel)
            if sub is not None:
                removed.append(sub)
        return removed

    def add_user(self, session: Session, limit: int) -> bool:
        """Count a connected session against its user; False past ``limit`` (anonymous
        sessions, user "", are not limited)."""
        users = self.users.setdefault(session.user, set())
        if session.user and len(users) >= limit:
            if not users:
                del self.users[session.user]
            return False
        users.add(session)
        return True

    def sessions_of(self, user: str) -> list[Session]:
        return list(self.users.get(user, ()))

    # Subscriptions.

    def add_subscription(self, session: Session, sub: Subscription) -> bool:
        """Subscribe; True when this is the channel's first subscriber on this node."""
        local = self.channels.get(sub.channel)
        first = local is None
        if local is None:
            local = self.channels[sub.channel] = {}
        local[session] = sub
        session.subscriptions[sub.channel] = sub
        return first

    def remove_subscription(self, session: Session, channel: str) -> Subscription | None:
        """Unsubscribe; the subscription, or None when there was none."""
        sub = session.subscriptions.pop(channel, None)
        local = self.channels.get(channel)
        if local is not None:
            local.pop(session, None)
            if not local:
                del self.channels[channel]
        return sub

    def subscribers(
        self, channel: str, user: str | None = None
    ) -> list[tuple[Session, Subscription]]:
        local = self.channels.get(channel, {})
        return [(s, sub) for s, sub in local.items() if user is None or s.user == user]

    def has_subscribers(self, channel: str) -> bool:
        return channel in self.channels

    # Fan-out.

    def fan_out(self, channel: str, text: str, offset: int) -> list[Slow]:
        """The same text to every live local subscriber of ``channel``, without waiting;
        return the subscribers whose outbox could not take it."""
        local = self.channels.get(channel)
        if not local:
            return []
        size = text_size(text)
        slow: list[Slow] = []
        groups: dict[type[Transport], list[Transport]] = {}
        owners: dict[int, tuple[Session, Subscription]] = {}
        delivered = 0
        for session, sub in local.items():
            if session.closed:
                continue
            if not sub.live:
                # Subscribing: delivered once the reply is out.
                if len(sub.pending) >= MAX_PENDING:
                    slow.append(Slow(session, sub))
                else:
                    sub.pending.append((offset, text))
                continue
            if not sub.advance(offset):
                continue  # already sent with the recovered publications
            delivered += 1
            # ``size``, not ``bool(outbox)``: an attribute read on the hot path (every
            # queued text is at least one byte, so zero means empty).
            if session.outbox.size:
                # Others wait before it: queue behind them, in order.
                if not session.queue(text, size):
                    delivered -= 1
                    slow.append(Slow(session, sub))
                continue
            transport = session.transport
            groups.setdefault(type(transport), []).append(transport)
            owners[id(transport)] = (session, sub)
        for kind, transports in groups.items():
            for waiting in kind.deliver_many(transports, text):
                session, sub = owners[id(waiting)]
                if not session.queue(text, size):
                    delivered -= 1  # dropped or disconnected: not given to it
                    slow.append(Slow(session, sub))
        self.deliveries += delivered
        return slow

    # Counts.

    def by_transport(self) -> dict[str, int]:
        counts: Counter[str] = Counter(s.transport_name for s in self.sessions)
        return dict(counts)

    def subscription_count(self) -> int:
        return sum(len(local) for local in self.channels.values())

    def channel_counts(self, channels: Iterable[str] | None = None) -> dict[str, int]:
        """Local subscribers per channel."""
        names = self.channels if channels is None else channels
        return {c: len(self.channels.get(c, {})) for c in names}
