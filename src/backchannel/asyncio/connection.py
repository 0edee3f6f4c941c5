"""A WebSocket connection on asyncio, shared by the server and the client.

Theory of operation
-------------------
:class:`Connection` is an :class:`asyncio.Protocol`: the event loop calls
``data_received`` with bytes from the socket; the connection feeds them to the
Sans-I/O :class:`backchannel.protocol.Connection`, writes the automatic replies it
queued, and appends complete messages to a queue that :meth:`Connection.recv` reads. No
task or future is created per frame.

Every write goes through one funnel, :meth:`Connection._write`. The transport's high
and low water marks pause and resume writing: :meth:`send` returns only once the
transport's buffer is below the high mark again, so a peer that does not read slows the
sender down instead of growing a buffer without bound. Reading is paused when
``max_queue`` messages wait for the application, and resumed when it has read them.

The subclasses in :mod:`.server` and :mod:`.client` handle the opening handshake in
``_handshake_data`` while ``self.protocol`` is ``None``, then call :meth:`_open`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from typing import Any, cast

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from ..protocol import connection as sansio
from ..protocol.events import BinaryMessage, Pong, TextMessage
from ..protocol.frames import CloseCode
from ..protocol.http11 import Request, Response

__all__ = ["Connection", "Data"]

logger = logging.getLogger("backchannel")

Data = str | bytes

#: The transport's write buffer limits: ``send`` waits while more than 64 KiB are
#: buffered and resumes below 16 KiB. Big enough to keep a socket busy, small enough that
#: ten thousand connections to slow readers cost at most 640 MiB.
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024

_TEXT = TextMessage
# Messages from this size on are framed by send_message_parts, which hands back a large
# payload apart from its header for one vectored write instead of a copy behind it.
_VECTOR_FROM = 16384
_BINARY = BinaryMessage
_PONG = Pong
_OK_CODES = frozenset({1000, 1001, 1005})


class Connection(asyncio.Protocol):
    """An open (or opening) WebSocket connection."""

    # Slots, here and in the subclasses: most connections of a server are idle, and an
    # instance dictionary costs more than the rest of the object.
    __slots__ = (
        "_close_timer",
        "_drain_waiters",
        "_is_lost",
        "_keepalive_timer",
        "_lingering",
        "_loop",
        "_lost_exc",
        "_lost_future",
        "_messages",
        "_pending",
        "_pending_size",
        "_pings",
        "_reading_paused",
        "_recv_waiter",
        "_send_lock",
        "_write_limit",
        "_writing_paused",
        "close_timeout",
        "latency",
        "max_queue",
        "ping_interval",
        "ping_timeout",
        "protocol",
        "request",
        "response",
        "transport",
    )

    def __init__(
        self,
        *,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float = 10,
        max_queue: int = 16,
        write_limit: tuple[int, int] = (WRITE_HIGH_WATER, WRITE_LOW_WATER),
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_queue = max(1, max_queue)
        self._write_limit = write_limit

        #: The Sans-I/O connection, once the handshake succeeded.
        self.protocol: sansio.Connection | None = None
        self.transport: asyncio.Transport | None = None
        #: The handshake request and response.
        self.request: Request | None = None
        self.response: Response | None = None
        #: The last round-trip time measured by a ping, in seconds.
        self.latency = 0.0

        self._messages: collections.deque[Data] = collections.deque()
        self._recv_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        # Idle connections are most connections: what is only needed sometimes (the
        # future wait_closed awaits, the lock of a fragmented send) is made on first use,
        # and keepalive runs on timer handles rather than a task.
        self._is_lost = False
        self._lost_future: asyncio.Future[None] | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Closing after a failure: nothing more is written, what arrives is discarded.
        self._lingering = False
        self._send_lock: asyncio.Lock | None = None
        # Frames held back to be written together (see _write), and their size.
        self._pending: list[bytes | bytearray | memoryview] | None = None
        self._pending_size = 0
        self._lost_exc: BaseException | None = None

    # Properties.

    @property
    def state(self) -> sansio.State:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        if self._is_lost:
            return sansio.CLOSED
        if self.protocol is None:
            return sansio.CONNECTING
        return self.protocol.state

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol agreed in the handshake, if any."""
        return None if self.protocol is None else self.protocol.subprotocol

    @property
    def close_code(self) -> int | None:
        """The close code, once the connection is closed (1006 without a close frame)."""
        if self.state is not sansio.CLOSED:
            return None
        return CloseCode.ABNORMAL if self.protocol is None else self.protocol.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason, once the connection is closed."""
        if self.state is not sansio.CLOSED:
            return None
        return "" if self.protocol is None else self.protocol.close_reason

    @property
    def remote_address(self) -> Any:
        """The peer's address, as the socket reports it."""
        return None if self.transport is None else self.transport.get_extra_info("peername")

    @property
    def local_address(self) -> Any:
        """Our address, as the socket reports it."""
        return None if self.transport is None else self.transport.get_extra_info("sockname")

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by :meth:`send` but not yet written to the socket."""
        if self.transport is None or self.transport.is_closing():
            return 0
        held = self._pending_size if self._pending is not None else 0
        return self.transport.get_write_buffer_size() + held

    @property
    def writable(self) -> bool:
        """Whether a whole message written now (:meth:`send_nowait`) goes out without
        growing the buffer past its high water mark: the connection is open, the peer
        keeps up, and no fragmented message is being sent."""
        proto = self.protocol
        transport = self.transport
        return (
            proto is not None
            and proto.state is sansio.OPEN
            and not self._writing_paused
            and transport is not None
            and not transport.is_closing()
            and not self._fragmenting()
        )

    # Receiving.

    async def recv(self) -> Data:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raise :class:`ConnectionClosedOK` or :class:`ConnectionClosedError` once the
        connection is closed and every message received before was read.
        """
        while True:
            if self._messages:
                message = self._messages.popleft()
                if self._reading_paused and len(self._messages) <= self.max_queue // 4:
                    self._resume_reading()
                return message
            proto = self.protocol
            if proto is not None and proto.failure_pending:
                self._flush_failure()
            if self._input_closed():
                raise self._closed_exception()
            if self._recv_waiter is not None:
                raise InvalidState("another coroutine is already waiting for a message")
            waiter = self._loop.create_future()
            self._recv_waiter = waiter
            try:
                await waiter
            finally:
                self._recv_waiter = None

    def __aiter__(self) -> AsyncIterator[Data]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Data]:
        """Messages until the connection closes; an abnormal close raises."""
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    # Sending.

    async def send(
        self,
        message: Data | bytearray | memoryview | Iterable[Data] | AsyncIterable[Data],
    ) -> None:
        """Send a message; an (async) iterable of str or bytes is sent as one fragmented
        message. Wait while the transport's buffer is above its high water mark."""
        if isinstance(message, str | bytes | bytearray | memoryview):
            if self._fragmenting():
                # A fragmented message is being sent: a whole one may not cut into it.
                async with self._fragment_lock():
                    self._send_whole(message)
            else:
                self._send_whole(message)
        elif isinstance(message, AsyncIterable):
            async with self._fragment_lock():
                await self._send_fragments(message.__aiter__())
        elif isinstance(message, Iterable):
            async with self._fragment_lock():
                await self._send_fragments(_aiter(message))
        else:
            raise TypeError(f"cannot send {type(message).__name__}")
        if self._writing_paused:
            await self.drain()

    def send_nowait(self, message: str | bytes | bytearray | memoryview) -> None:
        """Write a whole message now, without waiting for the buffer to drain.

        For callers that must not wait (a fan-out, a hub replying to a command): check
        :attr:`buffered_amount` to see whether the peer keeps up. Raise
        :class:`ConnectionClosed` once the connection is closed.
        """
        if self._fragmenting():
            raise InvalidState("a fragmented message is being sent")
        self._send_whole(message)

    def close_nowait(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake and return; :meth:`wait_closed` waits for the end.

        The TCP connection is dropped if the peer has not completed the handshake within
        ``close_timeout``.
        """
        proto = self.protocol
        if proto is not None and proto.state is sansio.OPEN:
            self._write(proto.send_close(code, reason))
            self._flush()
            self._arm_close_timer()

    def _send_whole(self, message: str | bytes | bytearray | memoryview) -> None:
        proto = self._open_protocol()
        if len(message) < _VECTOR_FROM:
            if isinstance(message, str):
                self._write(proto.send_text(message))
            else:
                self._write(proto.send_binary(message))
            return
        parts = proto.send_message_parts(message)
        first = parts[0]
        if len(parts) == 1 and isinstance(first, bytes):
            self._write(first)
        else:
            self._write_parts(parts)

    async def _send_fragments(self, fragments: AsyncIterator[Data]) -> None:
        try:
            first = await fragments.__anext__()
        except StopAsyncIteration:
            return
        proto = self._open_protocol()
        if isinstance(first, str):
            self._write(proto.send_text(first, fin=False))
            kind: type = str
        else:
            self._write(proto.send_binary(first, fin=False))
            kind = bytes
        async for fragment in fragments:
            if not isinstance(fragment, kind):
                # The message type cannot change halfway; fail it with 1011.
                self._fail(CloseCode.INTERNAL_ERROR, "")
                raise TypeError("all fragments of a message must have the same type")
            self._write(self._open_protocol().send_continuation(fragment, fin=False))
            if self._writing_paused:
                await self.drain()
        self._write(self._open_protocol().send_continuation(b"", fin=True))

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low water mark."""
        if not self._writing_paused or self._is_lost:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    async def ping(self, data: bytes | None = None) -> Awaitable[float]:
        """Send a ping; return an awaitable that resolves with the round-trip time."""
        return self._send_ping(data)

    def _send_ping(self, data: bytes | None) -> asyncio.Future[float]:
        proto = self._open_protocol()
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif data in self._pings:
            raise InvalidState("a ping with the same payload is already waiting")
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._write(proto.send_ping(data))
        self._pings[data] = (waiter, self._loop.time())
        return waiter

    async def pong(self, data: bytes = b"") -> None:
        """Send an unsolicited pong (a unidirectional heartbeat)."""
        self._write(self._open_protocol().send_pong(data))

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason`` and wait until it is closed.

        Gives the peer ``close_timeout`` seconds to complete the closing handshake, then
        drops the TCP connection.
        """
        proto = self.protocol
        if proto is not None and proto.state is sansio.OPEN:
            self._write(proto.send_close(code, reason))
        elif proto is None and self.transport is not None:
            self.transport.abort()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed, at most ``close_timeout`` once closing."""
        if self._is_lost:
            return
        lost = self._lost_waiter()
        if self.protocol is not None and self.protocol.state is sansio.OPEN:
            await asyncio.shield(lost)
            return
        try:
            async with asyncio.timeout(self.close_timeout):
                await asyncio.shield(lost)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()
            await asyncio.shield(lost)

    def _lost_waiter(self) -> asyncio.Future[None]:
        """A future that completes when the TCP connection is closed."""
        future = self._lost_future
        if future is None:
            future = self._lost_future = self._loop.create_future()
            if self._is_lost:
                future.set_result(None)
        return future

    def _fragmenting(self) -> bool:
        lock = self._send_lock
        return lock is not None and lock.locked()

    def _fragment_lock(self) -> asyncio.Lock:
        lock = self._send_lock
        if lock is None:
            lock = self._send_lock = asyncio.Lock()
        return lock

    # Internals: the write funnel.

    def _write(self, data: bytes) -> None:
        if self._lingering:
            return  # our close frame was the last thing written
        pending = self._pending
        if pending is not None:
            # Held back: see below. The last answer of the batch sends them all.
            pending.append(data)
            self._pending_size += len(data)
            if not self._messages or self._pending_size >= self._write_limit[0]:
                self._flush()
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._messages:
            # The application has more received messages to handle, and an application
            # that answers this one will likely answer those too: hold frames back and
            # write them with one system call when the queue is empty, or at the latest
            # on the next turn of the event loop. An answer to a lone message (a round
            # trip) goes out at once.
            self._pending = [data]
            self._pending_size = len(data)
            self._loop.call_soon(self._flush)
            return
        transport.write(data)

    def _write_parts(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Write a frame in pieces (a header and a large payload) in one vectored write,
        with no copy of the payload into one buffer first."""
        if self._lingering:
            return
        pending = self._pending
        if pending is not None:
            pending.extend(parts)
            self._pending_size += sum(len(part) for part in parts)
            if not self._messages or self._pending_size >= self._write_limit[0]:
                self._flush()
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._messages:
            # Held back with what follows, as in _write.
            self._pending = list(parts)
            self._pending_size = sum(len(part) for part in parts)
            self._loop.call_soon(self._flush)
            return
        transport.writelines(parts)

    def _flush(self) -> None:
        """Write the frames held back by :meth:`_write`."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(pending)

    def _open_protocol(self) -> sansio.Connection:
        proto = self.protocol
        if proto is None:
            raise InvalidState("the opening handshake has not completed")
        if proto.state is not sansio.OPEN or self._is_lost:
            raise self._closed_exception()
        return proto

    def _closed_exception(self) -> ConnectionClosed:
        proto = self.protocol
        if proto is None:
            return ConnectionClosedError(CloseCode.ABNORMAL, "", received=False)
        code = proto.close_code
        reason = proto.close_reason
        received = proto.close_received is not None
        exc_type = ConnectionClosedOK if received and code in _OK_CODES else ConnectionClosedError
        exc: ConnectionClosed = exc_type(code, reason, received=received)
        if proto.failure is not None:
            exc.__cause__ = proto.failure
        elif self._lost_exc is not None:
            exc.__cause__ = self._lost_exc
        return exc

    def _input_closed(self) -> bool:
        proto = self.protocol
        return self._is_lost or (proto is not None and proto.state is sansio.CLOSED)

    def _fail(self, code: int, reason: str) -> None:
        """Close without waiting for the peer (keepalive timeout, our own errors)."""
        proto = self.protocol
        if proto is not None and proto.state is sansio.OPEN:
            self._write(proto.send_close(code, reason))
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Close TCP after we failed the connection (or refused its handshake, see the
        server), so that the peer still gets our close code (or HTTP status).

        Closing a socket with unread data in its receive buffer makes the kernel answer
        with a reset, and a reset can destroy our close frame before the peer reads it: a
        browser uploading a message past ``max_size`` reported 1006, not 1009. So we close
        the way RFC 6455 section 7.1.1 describes: shut down our sending side after the
        close frame (a FIN), read until the peer closes its side or sends its close
        frame, then close. Whatever arrives meanwhile is dropped as it comes (the core
        reads only frame headers after a failure: nothing is buffered, unmasked or
        inflated), and ``close_timeout`` bounds the wait.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or self._lingering:
            return
        self._flush()
        self._lingering = True
        proto = self.protocol
        if proto is not None and proto.peer_closed:
            # The peer's close frame came already: it sends nothing more.
            transport.close()
            self._arm_close_timer()
            return
        if transport.can_write_eof():
            transport.write_eof()
        # TLS cannot half-close: there the close frame alone tells the peer we are done.
        # Reading may be paused (a full queue, a peer that did not read our writes); it
        # must go on until the peer closes, or the reset comes back.
        transport.resume_reading()
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self.transport is not None:
            self._close_timer = self._loop.call_later(self.close_timeout, self.transport.abort)

    # Internals: opening and receiving.

    def _open(self, proto: sansio.Connection, leftover: bytes) -> None:
        """The handshake succeeded: start speaking WebSocket."""
        proto.lazy_failure = True
        self.protocol = proto
        if self.ping_interval is not None:
            self._keepalive_timer = self._loop.call_later(self.ping_interval, self._keepalive)
        if leftover:
            self._receive(leftover)

    def _handshake_data(self, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _receive(self, data: bytes) -> None:
        proto = self.protocol
        assert proto is not None
        events = proto.receive_data(data)
        for frame in proto.data_to_send():
            # Through the funnel, so an automatic reply never overtakes frames held back.
            self._write(frame)
        if events:
            messages = self._messages
            for event in events:
                kind = type(event)
                if kind is _TEXT or kind is _BINARY:
                    messages.append(event.data)  # type: ignore[union-attr]
                elif kind is _PONG:
                    self._on_pong(event.data)  # type: ignore[union-attr, arg-type]
            if len(messages) >= self.max_queue and not self._reading_paused:
                self._pause_reading()
        if proto.failure_pending:
            # The peer broke a rule after messages the application has not read yet:
            # let it read (and answer) them, then send the close (see lazy_failure).
            if self._messages:
                if self._close_timer is None:
                    self._close_timer = self._loop.call_later(
                        self.close_timeout, self._flush_failure
                    )
            else:
                self._flush_failure()
        elif proto.state is sansio.CLOSED:
            self._on_protocol_closed(proto)
        self._wake_reader()

    def _flush_failure(self) -> None:
        proto = self.protocol
        if proto is None or not proto.failure_pending:
            return
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        proto.fail()
        for frame in proto.data_to_send():
            self._write(frame)
        self._on_protocol_closed(proto)
        self._wake_reader()

    def _on_protocol_closed(self, proto: sansio.Connection) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if proto.failure is not None:
            # Section 7.1.7: after a failure, either side closes at once, but without
            # losing the close frame to a reset (see _close_lingering).
            self._close_lingering()
            return
        if proto.side is sansio.SERVER:
            # Section 7.1.1: the server closes TCP first. The peer sent its close frame,
            # so nothing more is due from it.
            self._flush()
            transport.close()
        # Give the peer (or a write buffer stuck behind a peer that doesn't read) a bounded
        # time to let the TCP connection close.
        self._arm_close_timer()

    def _wake_reader(self) -> None:
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_pong(self, data: bytes) -> None:
        if data not in self._pings:
            return
        now = self._loop.time()
        # Section 5.5.3: a pong may answer several pings; resolve every earlier one too.
        for key in list(self._pings):
            waiter, sent = self._pings.pop(key)
            if not waiter.done():
                waiter.set_result(now - sent)
            if key == data:
                self.latency = now - sent
                break

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self._reading_paused = True

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self._writing_paused:
            return  # resume_writing will resume reading
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _keepalive(self) -> None:
        """Ping every ``ping_interval``; fail with 1011 without a pong in ``ping_timeout``."""
        self._keepalive_timer = None
        if self.state is not sansio.OPEN:
            return
        try:
            waiter = self._send_ping(None)
        except ConnectionClosed:
            return
        if self.ping_timeout is not None:
            self._keepalive_timer = self._loop.call_later(
                self.ping_timeout, self._keepalive_expired, waiter
            )
        waiter.add_done_callback(self._keepalive_pong)

    def _keepalive_pong(self, waiter: asyncio.Future[float]) -> None:
        if waiter.cancelled() or waiter.exception() is not None or self._is_lost:
            return
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        assert self.ping_interval is not None
        self._keepalive_timer = self._loop.call_later(self.ping_interval, self._keepalive)

    def _keepalive_expired(self, waiter: asyncio.Future[float]) -> None:
        self._keepalive_timer = None
        if not waiter.done():
            logger.info("no pong within %ss: closing with 1011", self.ping_timeout)
            self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    # asyncio.Protocol callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports don't subclass asyncio.Transport; same interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        high, low = self._write_limit
        transport.set_write_buffer_limits(high=high, low=low)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            # After our failure close, dropped unread (section 7.1.1); the core only
            # looks for the peer's close frame, after which nothing more comes.
            proto = self.protocol
            if proto is not None:
                proto.receive_data(data)
                if proto.peer_closed and self.transport is not None:
                    self.transport.close()
            return
        if self.protocol is None:
            self._handshake_data(data)
        else:
            self._receive(data)

    def eof_received(self) -> bool | None:
        if self.protocol is not None:
            self.protocol.receive_eof()
        # Returning None closes our side too: WebSocket has no use for half-closed TCP.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost_exc = exc
        if self.protocol is not None:
            self.protocol.receive_eof()
        self._is_lost = True
        if self._lost_future is not None and not self._lost_future.done():
            self._lost_future.set_result(None)
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        for waiter, _ in self._pings.values():
            if not waiter.done():
                waiter.set_exception(self._closed_exception())
                # Nobody may be awaiting a ping any more; don't warn about it.
                waiter.exception()
        self._pings.clear()
        self._release_drain_waiters()
        self._wake_reader()

    def pause_writing(self) -> None:
        self._writing_paused = True
        # A peer that does not read what we write must not make us buffer without
        # bound: its pings would each queue a pong. Stop reading it until it catches up.
        # Not while closing after a failure: nothing is answered then, and reading on is
        # what lets the peer finish (see _close_lingering).
        if self._lingering:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if (
            not self._reading_paused
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self.transport.resume_reading()
        self._release_drain_waiters()

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


async def _aiter(items: Iterable[Data]) -> AsyncIterator[Data]:
    for item in items:
        yield item
