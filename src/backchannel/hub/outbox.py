"""A session's outbox: the wire text waiting for its transport, bounded.

Every reply and push a session sends passes here when its transport cannot take it at
once. Fan-out puts the one encoded publication into each subscriber's outbox; each
transport drains its outbox its own way (WebSocket writes frames once the socket drains,
long polling answers the next poll). The bound is in bytes and in messages, so neither a
burst of small pushes nor a few large replies can grow a server's memory without limit:
past it, the caller applies the slow-consumer policy.

A notice (a ``dropped`` push: publications were not queued because the outbox was full)
cannot go in while the outbox is full, and must not wait for a later text that may never
come: the outbox keeps it aside, one per key (channel), and queues it as soon as it fits,
when a transport takes texts out or before the next text put in, so it always comes
after the texts queued before it and before those queued after.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Outbox", "text_size"]


def text_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8; cheap for ASCII (CPython knows it without a scan)."""
    return len(text) if text.isascii() else len(text.encode())


class Outbox:
    """Wire texts in order, with their total size in bytes."""

    __slots__ = ("_items", "_notices", "max_bytes", "max_messages", "size")

    def __init__(self, max_bytes: int, max_messages: int) -> None:
        self._items: deque[tuple[str, int]] = deque()
        #: Notices waiting for room, by key: at most one per key (the newest), so at
        #: most one per channel of the session.
        self._notices: dict[str, tuple[str, int]] = {}
        #: UTF-8 bytes of the texts waiting.
        self.size = 0
        self.max_bytes = max_bytes
        self.max_messages = max_messages

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def texts(self) -> list[str]:
        """What waits, oldest first (the same ``str`` objects that were queued)."""
        return [text for text, _ in self._items]

    def put(self, text: str, size: int) -> bool:
        """Queue ``text`` (of ``size`` bytes); False, and nothing queued, when it would
        pass either bound."""
        if len(self._items) >= self.max_messages or self.size + size > self.max_bytes:
            return False
        self._items.append((text, size))
        self.size += size
        return True

    def force(self, text: str) -> None:
        """Queue ``text`` past the bounds: only for the one disconnect push that ends a
        session, so a client always learns why."""
        size = text_size(text)
        self._items.append((text, size))
        self.size += size

    def take(self, max_bytes: int) -> list[str]:
        """The oldest texts, together at most ``max_bytes`` (at least one text, however
        large), removed from the outbox."""
        items = self._items
        out: list[str] = []
        taken = 0
        while items:
            text, size = items[0]
            if out and taken + size > max_bytes:
                break
            items.popleft()
            out.append(text)
            taken += size
        self.size -= taken
        if self._notices:
            self._admit()
        return out

    def note(self, key: str, text: str) -> None:
        """Queue the notice ``text`` as soon as it fits (now if it does); a later notice
        with the same ``key`` replaces one still waiting."""
        self._notices.pop(key, None)
        self._notices[key] = (text, text_size(text))
        self._admit()

    def _admit(self) -> None:
        notices = self._notices
        items = self._items
        for key, (text, size) in list(notices.items()):
            if len(items) >= self.max_messages or self.size + size > self.max_bytes:
                return
            del notices[key]
            items.append((text, size))
            self.size += size

    def clear(self) -> None:
        self._items.clear()
        self._notices.clear()
        self.size = 0
