"""Signed webhooks out: the hub's events POSTed to a backend (docs/operations.md,
"Webhooks").

:class:`Webhooks` is a :class:`~backchannel.hub.Hooks` that overrides observers only:
the hub calls them once per event in a cluster, on the node where the event starts, so
each event is sent by exactly one node. An observer only puts the event in a bounded
queue; sender tasks POST it with httpx, signed with HMAC-SHA256 over
``"{timestamp}.{body}"``, and try again with exponential backoff and full jitter. An
event that cannot be delivered within ``max_attempts`` or ``max_age`` goes to the
dead-letter log (one line: the event and the last error) and is counted.

Delivery is at least once: a request that timed out may have been processed, and is
sent again with the same delivery id, which the receiver uses to drop duplicates.

Needs the ``webhooks`` extra (``httpx``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from .. import __version__
from ..exceptions import InvalidArgument
from ..hub import Disconnect, Hooks, HubOptions, Session
from ..hub.wire import Publication
from .config import WEBHOOK_EVENTS, WebhooksConfig

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE",
    "Webhooks",
    "sign",
]

logger = logging.getLogger("backchannel.webhooks")

SIGNATURE_HEADER = "X-Backchannel-Signature"
TIMESTAMP_HEADER = "X-Backchannel-Timestamp"
DELIVERY_HEADER = "X-Backchannel-Delivery"
EVENT_HEADER = "X-Backchannel-Event"

#: Seconds between a request's timestamp and its receipt that the documented receiver
#: accepts: a captured request cannot be replayed later than this. Each attempt is
#: signed afresh, so a retry is never refused for its age.
TOLERANCE = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``v1=`` and the hex HMAC-SHA256 of
    ``"{timestamp}.{body}"`` with ``secret``. The version prefix lets a later scheme be
    sent beside this one."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class _Delivery:
    """One event on its way: the same id and body at every attempt."""

    id: str
    event: str
    body: bytes
    created: float
    attempts: int = 0
    error: str = ""
    retry: asyncio.TimerHandle | None = field(default=None, repr=False)


class Webhooks(Hooks):
    """Sends the hub's events to ``config.url``; pass it as ``Hub(hooks=...)``, call
    :meth:`start` before clients come (events before it are dropped) and :meth:`close`
    after the hub closed (so the events of its shutdown go out too)."""

    def __init__(self, config: WebhooksConfig, options: HubOptions, *, node: str = "") -> None:
        config.check()
        if not config.url:
            raise InvalidArgument("webhooks.url is empty: webhooks are off")
        self.config = config
        self.options = options
        self.node = node
        self._events = frozenset(WEBHOOK_EVENTS if "*" in config.events else config.events)
        self._namespaces = None if "*" in config.namespaces else frozenset(config.namespaces)
        #: Counters since start (``backchannel_webhooks_total{outcome}``).
        self.sent = 0  # events delivered (a 2xx answer)
        self.failed = 0  # attempts that failed (another status, a timeout, no connection)
        self.retried = 0  # attempts scheduled again after a failure
        self.dropped = 0  # events not queued: the queue was full
        self.dead_lettered = 0  # events given up, in the dead-letter log
        self._ready: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._waiting: dict[str, _Delivery] = {}  # for a retry
        self._sending: dict[str, _Delivery] = {}
        self._drained = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    # Lifecycle.

    async def start(self) -> None:
        config = self.config
        self._client = httpx.AsyncClient(
            timeout=config.timeout,
            limits=httpx.Limits(max_connections=config.concurrency),
            # A redirect is an answer that is not 2xx: the event is tried again, not
            # sent with its signature to wherever the receiver points.
            follow_redirects=False,
            headers={"User-Agent": f"backchannel/{__version__}"},
        )
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(config.concurrency)]

    async def close(self) -> None:
        """Deliver what waits for up to ``flush_timeout`` seconds (retries included),
        then put what is left in the dead-letter log and stop."""
        if self.pending:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.flush_timeout):
                    await self._drained.wait()
        # Taken before the workers stop (a stopped worker forgets its request): a request
        # cut short may have been processed, so it is a dead letter, to be replayed and
        # dropped by its id if it was.
        left = [*self._sending.values(), *self._waiting.values()]
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._ready.empty():
            left.append(self._ready.get_nowait())
        for delivery in left:
            if delivery.retry is not None:
                delivery.retry.cancel()
            error = "not delivered at shutdown"
            if delivery.error:
                error += f" (last error: {delivery.error})"
            self._dead_letter(delivery, error)
        self._sending.clear()
        self._waiting.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def pending(self) -> int:
        """Events queued, in flight or waiting for a retry."""
        return self._ready.qsize() + len(self._sending) + len(self._waiting)

    def stats(self) -> dict[str, int]:
        """The counters by outcome, for metrics."""
        return {
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
        }

    # The hub's observers: each only queues.

    async def on_connect(self, session: Session) -> None:
        self._emit("connect", None, {**session.who.to_json(), "transport": session.transport_name})

    async def on_disconnect(self, session: Session, disconnect: Disconnect | None) -> None:
        # code and reason: why the server ended it; null when the client left.
        self._emit(
            "disconnect",
            None,
            {
                **session.who.to_json(),
                "code": disconnect.code if disconnect is not None else None,
                "reason": disconnect.reason if disconnect is not None else None,
            },
        )

    async def on_subscribe(self, session: Session, channel: str) -> None:
        who = session.who.to_json()
        self._emit("subscribe", channel, {"channel": channel, **who})
        if self._has_presence(channel):
            self._emit("presence_join", channel, {"channel": channel, **who})

    async def on_unsubscribe(self, session: Session, channel: str) -> None:
        who = session.who.to_json()
        self._emit("unsubscribe", channel, {"channel": channel, **who})
        if self._has_presence(channel):
            self._emit("presence_leave", channel, {"channel": channel, **who})

    async def on_publish(self, publication: Publication, session: Session | None) -> None:
        payload: dict[str, Any] = {
            "channel": publication.channel,
            "data": publication.data,
            "offset": publication.offset,
            "epoch": publication.epoch,
        }
        if publication.publisher is not None:  # absent: published by the server
            payload.update(publication.publisher.to_json())
        self._emit("publish", publication.channel, payload)

    async def on_channel_occupied(self, channel: str) -> None:
        self._emit("channel_occupied", channel, {"channel": channel})

    async def on_channel_vacated(self, channel: str) -> None:
        self._emit("channel_vacated", channel, {"channel": channel})

    # Not the hub's: this node's alerts (app/alerts.py).

    def send_alert(self, event: dict[str, Any]) -> None:
        """Queue an ``alert`` event: a raise or a resolve of one of this node's alert
        rules (its ``name``, ``state``, ``value``, ``threshold``, ``message``)."""
        # The body's own "time" (milliseconds, like every event's) stands for the alert's.
        self._emit("alert", None, {k: v for k, v in event.items() if k != "time"})

    # Queueing.

    def wants(self, event: str, channel: str | None) -> bool:
        """Whether ``event`` (in ``channel``; None for connect and disconnect) is sent."""
        if event not in self._events:
            return False
        if channel is None or self._namespaces is None:
            return True
        namespace, sep, _ = channel.lstrip("$").partition(":")
        return (namespace if sep else "default") in self._namespaces

    def _has_presence(self, channel: str) -> bool:
        options = self.options.channel(channel.lstrip("$"))
        return options is not None and options.presence

    def _emit(self, event: str, channel: str | None, payload: dict[str, Any]) -> None:
        if not self.wants(event, channel):
            return
        if self.pending >= self.config.queue_size or self._client is None:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "webhook %s dropped: %d events waiting (%d dropped so far)",
                    event,
                    self.pending,
                    self.dropped,
                )
            return
        delivery_id = str(uuid.uuid4())
        body = {
            "id": delivery_id,
            "event": event,
            "time": int(time.time() * 1000),
            "node": self.node,
            **payload,
        }
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        loop = asyncio.get_running_loop()
        self._ready.put_nowait(_Delivery(delivery_id, event, text.encode(), loop.time()))

    # Sending.

    async def _work(self) -> None:
        while True:
            delivery = await self._ready.get()
            self._sending[delivery.id] = delivery
            try:
                delivered = await self._attempt(delivery)
            except Exception as exc:  # a bug here must not stop a sender for good
                logger.exception("webhook %s: sending failed", delivery.id)
                delivery.error = repr(exc)
                delivered = False
            finally:
                self._sending.pop(delivery.id, None)
            if delivered:
                self.sent += 1
            else:
                self._failed(delivery)
            if not self.pending:
                self._drained.set()

    async def _attempt(self, delivery: _Delivery) -> bool:
        assert self._client is not None
        delivery.attempts += 1
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self.config.secret, timestamp, delivery.body),
            DELIVERY_HEADER: delivery.id,
            EVENT_HEADER: delivery.event,
        }
        try:
            response = await self._client.post(
                self.config.url, content=delivery.body, headers=headers
            )
        except httpx.HTTPError as exc:
            delivery.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            return False
        if 200 <= response.status_code < 300:
            return True
        delivery.error = f"HTTP {response.status_code}"
        return False

    def _failed(self, delivery: _Delivery) -> None:
        self.failed += 1
        config = self.config
        loop = asyncio.get_running_loop()
        # Full jitter: after an outage, the nodes' retries do not all arrive at once.
        bound = min(config.retry_max, config.retry_min * 2 ** (delivery.attempts - 1))
        delay = random.uniform(0, bound)
        age = loop.time() - delivery.created
        if delivery.attempts >= config.max_attempts or age + delay > config.max_age:
            self._dead_letter(delivery, delivery.error)
            return
        self.retried += 1
        self._waiting[delivery.id] = delivery
        delivery.retry = loop.call_later(delay, self._again, delivery)

    def _again(self, delivery: _Delivery) -> None:
        delivery.retry = None
        if self._waiting.pop(delivery.id, None) is not None:
            self._ready.put_nowait(delivery)

    def _dead_letter(self, delivery: _Delivery, error: str) -> None:
        self.dead_lettered += 1
        # One line that a script can replay: the event as it was sent, and why not.
        logger.error(
            "webhook dead letter: %s",
            json.dumps(
                {
                    "error": error,
                    "attempts": delivery.attempts,
                    "event": json.loads(delivery.body),
                },
                separators=(",", ":"),
                ensure_ascii=False,
            ),
        )
