"""Alert rules of one node (docs/operations.md, "Alerts"): conditions on the hub's own
numbers, evaluated every ``alerts.interval`` seconds, each raised once when it becomes
true and resolved once when it becomes false again.

Every rule reads public data only: :meth:`Hub.statistics` (sessions, the slow-consumer
counter), the fan-out latency histogram (``Hub.fanout_latency``) and a ping of the
broker. Rates and the p99 are measured over a sliding ``window``: each evaluation keeps
a sample of the counters, and the difference with the sample taken ``window`` seconds
earlier is what happened in between. A raise or a resolve is logged (logger
``backchannel.alerts``), kept for the dashboard (:meth:`Alerts.events`), and handed to
``notify`` (the webhooks' ``alert`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import BrokerUnavailable
from ..hub import Hub
from ..hub.latency import BUCKETS, Snapshot
from .config import AlertsConfig

__all__ = ["RULES", "Alerts"]

logger = logging.getLogger("backchannel.alerts")

#: The rules, by name (in events, logs and metrics), and what each watches.
RULES = {
    "connections": "client sessions on this node",
    "slow_consumers": "slow consumers per minute",
    "fanout_p99": "fan-out latency p99 (ms)",
    "broker_unreachable": "broker unreachable",
}

#: Samples kept per window, at most (about): evaluations closer together than
#: window / SAMPLES_PER_WINDOW replace the newest sample rather than add one, so a short
#: interval (or many calls of :meth:`Alerts.evaluate`) cannot grow the memory kept, and
#: the window's start is still known to 1 % of its length.
SAMPLES_PER_WINDOW = 100

#: The largest finite fan-out latency the histogram can tell apart, in milliseconds: a
#: p99 past every bucket is reported as this (an event's value must be a finite number).
_LAST_BOUND_MS = BUCKETS[-1] * 1000


@dataclass(frozen=True, slots=True)
class _Sample:
    """The counters at one evaluation: what a later one subtracts."""

    time: float
    slow_consumers: int
    fanout: Snapshot


@dataclass(slots=True)
class _Rule:
    name: str
    threshold: float
    #: When its condition was first seen true in the current run of true evaluations.
    since: float | None = None
    raised: dict[str, Any] | None = None


class Alerts:
    """The configured rules over ``hub``; :meth:`start` after the hub started,
    :meth:`close` before it closes. ``notify`` gets each raise and resolve event."""

    def __init__(
        self,
        config: AlertsConfig,
        hub: Hub,
        *,
        notify: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.hub = hub
        self.notify = notify
        # Each rule is raised while its value is above its threshold; a broker that
        # does not answer has the value 1, above 0.
        thresholds = {
            "connections": float(config.connections_above),
            "slow_consumers": config.slow_consumers_per_minute_above,
            "fanout_p99": config.fanout_p99_ms_above,
        }
        self._rules = [_Rule(name, value) for name, value in thresholds.items() if value > 0]
        if config.broker_unreachable:
            self._rules.append(_Rule("broker_unreachable", 0.0))
        self._events: deque[dict[str, Any]] = deque(maxlen=config.events_kept)
        self._samples: deque[_Sample] = deque()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # The interface the dashboard reads.

    def events(self) -> list[dict[str, Any]]:
        """Raises and resolves, newest last (at most ``events_kept``)."""
        return [dict(event) for event in self._events]

    def active(self) -> list[dict[str, Any]]:
        """The raise event of each rule raised and not resolved yet."""
        return [dict(rule.raised) for rule in self._rules if rule.raised is not None]

    def states(self) -> dict[str, bool]:
        """Whether each configured rule is raised, by name (for metrics)."""
        return {rule.name: rule.raised is not None for rule in self._rules}

    # Lifecycle.

    async def start(self) -> None:
        # The first sample: the window's rates start from here, not from the hub's start.
        self._samples.append(self._sample(asyncio.get_running_loop().time()))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop evaluating. What is raised stays so: the node is going, not recovering."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                await self.evaluate()
            except Exception:  # a bug in one evaluation must not stop the alerts for good
                logger.exception("alerts: evaluation failed")

    # Evaluation.

    async def evaluate(self, now: float | None = None) -> None:
        """Evaluate every rule once, at ``now`` (the event loop's clock by default; a
        test passes its own to move the window without waiting)."""
        async with self._lock:
            if now is None:
                now = asyncio.get_running_loop().time()
            values = await self._measure(now)
            for rule in self._rules:
                value = values.get(rule.name)
                self._judge(rule, value, now)

    async def _measure(self, now: float) -> dict[str, float | None]:
        sample = self._sample(now)
        if not self._samples:  # evaluated before start: the window starts now
            self._samples.append(sample)
        baseline = self._baseline(now)
        self._keep(sample)
        values: dict[str, float | None] = {}
        wanted = {rule.name for rule in self._rules}
        if "connections" in wanted:
            values["connections"] = float(self.hub.statistics().sessions)
        # Per minute over the window, however long it is: a window shorter than the
        # time since start is measured from the first sample.
        span = max(now - baseline.time, self.config.window)
        if "slow_consumers" in wanted:
            values["slow_consumers"] = (
                (sample.slow_consumers - baseline.slow_consumers) * 60.0 / span
            )
        if "fanout_p99" in wanted:
            p99 = sample.fanout.since(baseline.fanout).quantile(0.99)
            # None: nothing was fanned out in the window, so nothing was slow.
            values["fanout_p99"] = None if p99 is None else p99 * 1000
        if "broker_unreachable" in wanted:
            values["broker_unreachable"] = await self._broker_down()
        return values

    def _sample(self, now: float) -> _Sample:
        return _Sample(
            now, self.hub.statistics().slow_consumers, self.hub.fanout_latency.snapshot()
        )

    def _baseline(self, now: float) -> _Sample:
        """The newest sample at least ``window`` old (or the oldest one, near start);
        older ones are forgotten."""
        start = now - self.config.window
        while len(self._samples) > 1 and self._samples[1].time <= start:
            self._samples.popleft()
        return self._samples[0]

    def _keep(self, sample: _Sample) -> None:
        samples = self._samples
        step = self.config.window / SAMPLES_PER_WINDOW
        if len(samples) > 1 and sample.time - samples[-2].time < step:
            samples[-1] = sample
        else:
            samples.append(sample)

    async def _broker_down(self) -> float:
        try:
            async with asyncio.timeout(self.config.broker_timeout):
                await self.hub.broker.ping()
        except (BrokerUnavailable, TimeoutError):
            return 1.0
        return 0.0

    def _judge(self, rule: _Rule, value: float | None, now: float) -> None:
        if value is not None and value > rule.threshold:
            if rule.raised is not None:
                return  # raised already: no repeat while it holds
            if rule.since is None:
                rule.since = now
            if now - rule.since >= self.config.hold:
                rule.raised = self._event(rule, "raised", value)
            return
        rule.since = None
        if rule.raised is not None:
            rule.raised = None
            self._event(rule, "resolved", value if value is not None else 0.0)

    def _event(self, rule: _Rule, state: str, value: float) -> dict[str, Any]:
        event = {
            "time": time.time(),
            "name": rule.name,
            "state": state,
            # A p99 past every bucket is infinite: shown as the last bound, since an
            # event's value is a number (and JSON has no infinity).
            "value": min(value, _LAST_BOUND_MS) if rule.name == "fanout_p99" else value,
            "threshold": rule.threshold,
            "message": _message(rule.name, state, value, rule.threshold),
        }
        self._events.append(event)
        if state == "raised":
            logger.warning("alert raised: %s", event["message"])
        else:
            logger.info("alert resolved: %s", event["message"])
        if self.notify is not None:
            self.notify(dict(event))
        return event


def _message(name: str, state: str, value: float, threshold: float) -> str:
    if name == "broker_unreachable":
        if state == "raised":
            return "broker unreachable: no answer to a ping"
        return "broker reachable again"
    shown = f"over {_LAST_BOUND_MS:g}" if value > _LAST_BOUND_MS else f"{value:g}"
    relation = "above" if state == "raised" else "no longer above"
    return f"{RULES[name]}: {shown}, {relation} {threshold:g}"
