"""Prometheus metrics of one node, served at ``/metrics`` (docs/operations.md).

The hub already counts what matters (:meth:`Hub.statistics`); this module reads those
counts when Prometheus scrapes, so metrics add nothing to the hot path. What the hub does
not count (HTTP API requests) is counted here, once per request. Every metric carries a
``node`` label, so a cluster's nodes add up in one query.

Needs the ``metrics`` extra (``prometheus-client``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..hub import Hub
from ..hub.brokers.calls import BrokerCalls
from ..hub.latency import BUCKETS, Snapshot

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The content type of the text exposition format.
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The metrics of one node: its hub's statistics, read at each scrape, and the
    counters kept here. Each instance has its own registry (several servers in one
    process, as in tests, never share counts)."""

    def __init__(
        self,
        hub: Hub,
        node: str,
        *,
        long_polls: Callable[[], int] | None = None,
        webhooks: Callable[[], Mapping[str, int]] | None = None,
        alerts: Callable[[], Mapping[str, bool]] | None = None,
    ) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_HubCollector(hub, node, long_polls))
        if webhooks is not None:
            self.registry.register(_WebhooksCollector(webhooks, node))
        if alerts is not None:
            self.registry.register(_AlertsCollector(alerts, node))
        self._api_requests = Counter(
            "backchannel_api_requests",
            "HTTP API requests, by method and HTTP status.",
            ["node", "method", "status"],
            registry=self.registry,
        )

    def api_request(self, method: str, status: int) -> None:
        """Count one HTTP API request. ``method`` is the API method asked for; an unknown
        one is counted as ``other`` so a client cannot grow the label set."""
        self._api_requests.labels(self.node, method, str(status)).inc()

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


def _histogram_buckets(snapshot: Snapshot) -> list[tuple[str, float]]:
    """Cumulative buckets, as Prometheus has them, from a fixed-bucket snapshot."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*BUCKETS, float("inf")), snapshot.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets


def _broker_metrics(calls: BrokerCalls, node: str) -> Iterator[Metric]:
    """Round trips to the broker's store (Redis), by operation; nothing for the memory
    broker, which makes none."""
    count = CounterMetricFamily(
        "backchannel_broker_calls",
        "Round trips to the broker's store (Redis), by operation.",
        labels=["node", "operation"],
    )
    errors = CounterMetricFamily(
        "backchannel_broker_errors",
        "Round trips to the broker's store that failed, by operation.",
        labels=["node", "operation"],
    )
    latency = HistogramMetricFamily(
        "backchannel_broker_call_seconds",
        "Time of a round trip to the broker's store, by operation.",
        labels=["node", "operation"],
    )
    for operation in sorted(calls.count):
        count.add_metric([node, operation], calls.count[operation])
        errors.add_metric([node, operation], calls.errors[operation])
        snapshot = calls.latency[operation].snapshot()
        latency.add_metric([node, operation], _histogram_buckets(snapshot), snapshot.total)
    yield count
    yield errors
    yield latency


class _HubCollector(Collector):
    """Reads :meth:`Hub.statistics` when scraped."""

    def __init__(self, hub: Hub, node: str, long_polls: Callable[[], int] | None) -> None:
        self.hub = hub
        self.node = node
        self.long_polls = long_polls

    def collect(self) -> Iterator[Metric]:
        stats = self.hub.statistics()
        node = self.node

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["node"])
            family.add_metric([node], value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["node"])
            family.add_metric([node], value)
            return family

        by_transport = GaugeMetricFamily(
            "backchannel_connections",
            "Client sessions on this node, by transport.",
            labels=["node", "transport"],
        )
        # Every transport is listed, with 0 when unused, so a query never sees a gap.
        counts = {"websocket": 0, "longpoll": 0, "sse": 0, **stats.sessions_by_transport}
        for transport, count in sorted(counts.items()):
            by_transport.add_metric([node, transport], count)
        yield by_transport
        yield gauge("backchannel_sessions", "Client sessions on this node.", stats.sessions)
        yield gauge("backchannel_users", "Distinct users connected to this node.", stats.users)
        yield gauge(
            "backchannel_subscriptions",
            "Channel subscriptions of this node's sessions.",
            stats.subscriptions,
        )
        yield gauge(
            "backchannel_channels", "Channels with a subscriber on this node.", stats.channels
        )
        if self.long_polls is not None:
            yield gauge(
                "backchannel_long_polls_held",
                "Long polls waiting for something to answer.",
                self.long_polls(),
            )
        yield counter(
            "backchannel_publications_accepted",
            "Publications accepted on this node, from clients or the server.",
            stats.publications_in,
        )
        yield counter(
            "backchannel_publications_fanned_out",
            "Publications this node fanned out to its subscribers (from any node).",
            stats.publications_out,
        )
        yield counter(
            "backchannel_deliveries",
            "Publications, joins and leaves given to this node's subscribers.",
            stats.deliveries,
        )
        slow = CounterMetricFamily(
            "backchannel_slow_consumers",
            "Times a session's outbox was full, by the slow-consumer policy applied.",
            labels=["node", "policy"],
        )
        for policy, count in sorted(
            {"disconnect": 0, "drop": 0, **stats.slow_consumers_by_policy}.items()
        ):
            slow.add_metric([node, policy], count)
        yield slow
        yield counter(
            "backchannel_publications_refused",
            "Publishes refused: by the hub's checks, the application, or a broker down.",
            stats.publications_refused,
        )
        commands = CounterMetricFamily(
            "backchannel_commands",
            "Client commands answered, by method and result code (0: success).",
            labels=["node", "method", "code"],
        )
        for method, by_code in sorted(stats.commands.items()):
            for code, count in sorted(by_code.items()):
                commands.add_metric([node, method, str(code)], count)
        yield commands
        yield from _broker_metrics(self.hub.broker.calls, node)
        recoveries = CounterMetricFamily(
            "backchannel_recoveries",
            "Subscriptions that asked to recover missed publications, by outcome.",
            labels=["node", "outcome"],
        )
        recoveries.add_metric([node, "recovered"], stats.recoveries_succeeded)
        recoveries.add_metric([node, "lost"], stats.recoveries_failed)
        yield recoveries
        fanout = self.hub.fanout_latency.snapshot()
        latency = HistogramMetricFamily(
            "backchannel_fanout_seconds",
            "From a publication reaching this node to every local subscriber's copy "
            "written or queued.",
            labels=["node"],
        )
        latency.add_metric([node], _histogram_buckets(fanout), fanout.total)
        yield latency
        yield counter(
            "backchannel_hook_events_dropped",
            "Observer hook events dropped because the application's hooks fell behind.",
            stats.hook_events_dropped,
        )


class _WebhooksCollector(Collector):
    """Reads the webhooks' counters (``Webhooks.stats``) when scraped."""

    def __init__(self, stats: Callable[[], Mapping[str, int]], node: str) -> None:
        self.stats = stats
        self.node = node

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "backchannel_webhooks",
            "Webhook events and attempts, by outcome (docs/operations.md, Webhooks).",
            labels=["node", "outcome"],
        )
        for outcome, count in sorted(self.stats().items()):
            family.add_metric([self.node, outcome], count)
        yield family


class _AlertsCollector(Collector):
    """Reads whether each alert rule is raised (``Alerts.states``) when scraped."""

    def __init__(self, states: Callable[[], Mapping[str, bool]], node: str) -> None:
        self.states = states
        self.node = node

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "backchannel_alerts_active",
            "1 while the alert rule is raised on this node, else 0 (docs/operations.md, Alerts).",
            labels=["node", "name"],
        )
        for name, raised in sorted(self.states().items()):
            family.add_metric([self.node, name], 1.0 if raised else 0.0)
        yield family
