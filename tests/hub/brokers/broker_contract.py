"""The contract every broker passes (see ``backchannel.hub.brokers.base``).

A test module subclasses :class:`BrokerContract` and provides two fixtures: ``broker``, a
started broker whose handler is the ``recorder`` fixture defined here, and ``clock``, an
object whose ``advance(seconds)`` moves the broker's time forward. A broker for several
nodes also overrides ``cluster``: started brokers acting as one (``broker`` first), by
default ``[broker]`` alone.

Delivery may be asynchronous (a networked broker), so tests wait for the events they
expect with :meth:`Recorder.wait_for`. To show that something was *not* delivered
without sleeping, a test then sends a marker on the same channel: calls for one channel
come in order, so once the marker has arrived, anything published before it would have
arrived too. Durations are small so that a broker whose clock really sleeps stays fast.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backchannel.hub.brokers import Broker, HistoryOptions, PresencePage
from backchannel.hub.wire import ClientInfo, Position, Publication

__all__ = ["BrokerContract", "Clock", "ManualClock", "Recorder"]

HISTORY = HistoryOptions(size=10, ttl=2.0)
ALICE = ClientInfo("c1", "alice")
ALICE_TOO = ClientInfo("c2", "alice", {"device": "phone"})
BOB = ClientInfo("c3", "bob")

# Hypothesis examples share one broker, so each example gets channels of its own.
_example_ids = itertools.count()


class Clock(Protocol):
    """Moves the broker's time forward."""

    def advance(self, seconds: float) -> None: ...


class ManualClock:
    """A clock (in seconds) that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A broker handler that records every call, in order, as a tuple."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed = asyncio.Event()

    def on_publication(self, publication: Publication) -> None:
        self._record(("publication", publication))

    def on_join(self, channel: str, who: ClientInfo) -> None:
        self._record(("join", channel, who))

    def on_leave(self, channel: str, who: ClientInfo) -> None:
        self._record(("leave", channel, who))

    def on_lost(self, channel: str) -> None:
        self._record(("lost", channel))

    def on_control(self, message: dict[str, Any]) -> None:
        self._record(("control", message))

    def _record(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, count: int) -> list[tuple[Any, ...]]:
        """Wait until ``count`` events have been recorded; return all of them."""
        while len(self.events) < count:
            self._changed.clear()
            await self._changed.wait()
        return self.events

    def data(self) -> list[Any]:
        """The data of the recorded publications, in order."""
        return [event[1].data for event in self.events if event[0] == "publication"]


def offsets(publications: list[Publication]) -> list[int]:
    return [p.offset for p in publications]


class BrokerContract:
    """Behaviour every broker must have; subclass it with ``broker`` and ``clock``."""

    @pytest.fixture
    def recorder(self) -> Recorder:
        return Recorder()

    @pytest.fixture
    def cluster(self, broker: Broker) -> list[Broker]:
        return [broker]

    async def test_describe_is_one_short_line_or_nothing(self, broker: Broker) -> None:
        """What the banner adds to the broker's configuration."""
        found = broker.describe()
        assert found is None or (found and "\n" not in found and len(found) < 200)

    # Delivery.

    async def test_publish_delivers_to_subscribed_node_in_offset_order(
        self, broker: Broker, recorder: Recorder
    ) -> None:
        await broker.subscribe("news")
        for i in range(5):
            await broker.publish("news", i, history=HISTORY)
        events = await recorder.wait_for(5)
        assert [e[0] for e in events] == ["publication"] * 5
        assert recorder.data() == [0, 1, 2, 3, 4]
        assert offsets([e[1] for e in events]) == [1, 2, 3, 4, 5]
        assert {e[1].channel for e in events} == {"news"}

    async def test_control_messages_reach_this_node_without_subscribing(
        self, broker: Broker, recorder: Recorder
    ) -> None:
        await broker.publish_control({"op": "disconnect", "user": "alice"})
        events = await recorder.wait_for(1)
        assert events == [("control", {"op": "disconnect", "user": "alice"})]

    async def test_publish_carries_publisher(self, broker: Broker, recorder: Recorder) -> None:
        await broker.subscribe("news")
        result = await broker.publish("news", {"a": 1}, publisher=ALICE)
        [event] = await recorder.wait_for(1)
        assert event == ("publication", result.publication)
        assert event[1].publisher == ALICE
        assert event[1].data == {"a": 1}

    async def test_publish_does_not_deliver_to_unsubscribed_node(
        self, broker: Broker, recorder: Recorder
    ) -> None:
        await broker.publish("news", "missed")
        await broker.subscribe("news")
        await broker.publish("news", "marker")
        await recorder.wait_for(1)
        assert recorder.data() == ["marker"]

    async def test_unsubscribe_stops_delivery(self, broker: Broker, recorder: Recorder) -> None:
        await broker.subscribe("news")
        await broker.publish("news", "before")
        await recorder.wait_for(1)
        await broker.unsubscribe("news")
        await broker.publish("news", "during")
        await broker.subscribe("news")
        await broker.publish("news", "marker")
        await recorder.wait_for(2)
        assert recorder.data() == ["before", "marker"]

    async def test_subscribe_is_idempotent(self, broker: Broker, recorder: Recorder) -> None:
        await broker.subscribe("news")
        await broker.subscribe("news")
        await broker.publish("news", "once")
        await broker.publish("news", "marker")
        await recorder.wait_for(2)
        assert recorder.data() == ["once", "marker"]

    async def test_unsubscribe_is_idempotent(self, broker: Broker, recorder: Recorder) -> None:
        await broker.unsubscribe("never")
        await broker.subscribe("news")
        await broker.unsubscribe("news")
        await broker.unsubscribe("news")
        await broker.publish("news", "missed")
        await broker.subscribe("news")
        await broker.publish("news", "marker")
        await recorder.wait_for(1)
        assert recorder.data() == ["marker"]

    async def test_delivery_is_per_channel(self, broker: Broker, recorder: Recorder) -> None:
        await broker.subscribe("a")
        await broker.publish("b", "other channel")
        await broker.publish("a", "marker")
        events = await recorder.wait_for(1)
        assert [e[1].channel for e in events] == ["a"]

    async def test_join_and_leave_are_delivered_to_subscribed_node(
        self, broker: Broker, recorder: Recorder
    ) -> None:
        await broker.publish_join("room", BOB)  # not subscribed yet: not delivered
        await broker.subscribe("room")
        await broker.publish_join("room", ALICE)
        await broker.publish("room", "hello")
        await broker.publish_leave("room", ALICE)
        events = await recorder.wait_for(3)
        assert events[0] == ("join", "room", ALICE)
        assert events[1][0] == "publication"
        assert events[1][1].data == "hello"
        assert events[2] == ("leave", "room", ALICE)
        assert len(events) == 3

    async def test_close_stops_delivery_and_is_idempotent(
        self, broker: Broker, recorder: Recorder
    ) -> None:
        await broker.subscribe("news")
        await broker.publish("news", "before")
        await recorder.wait_for(1)
        await broker.close()
        await broker.close()
        await broker.publish("news", "after", history=HISTORY)
        await broker.publish_join("news", ALICE)
        await broker.publish_leave("news", ALICE)
        assert recorder.data() == ["before"]
        assert len(recorder.events) == 1

    # History.

    async def test_offsets_start_at_one_and_epoch_is_stable(self, broker: Broker) -> None:
        results = [await broker.publish("news", i, history=HISTORY) for i in range(3)]
        pubs = [r.publication for r in results]
        assert offsets(pubs) == [1, 2, 3]
        assert all(not r.duplicate for r in results)
        epoch = pubs[0].epoch
        assert epoch
        assert {p.epoch for p in pubs} == {epoch}
        history = await broker.history("news")
        assert history.publications == pubs
        assert history.position == Position(epoch, 3)
        assert history.recovered

    async def test_streams_are_per_channel(self, broker: Broker) -> None:
        await broker.publish("a", "a1", history=HISTORY)
        await broker.publish("a", "a2", history=HISTORY)
        b = await broker.publish("b", "b1", history=HISTORY)
        assert b.publication.offset == 1
        assert offsets((await broker.history("a")).publications) == [1, 2]
        assert [p.data for p in (await broker.history("b")).publications] == ["b1"]

    async def test_publish_without_history_stores_nothing(self, broker: Broker) -> None:
        result = await broker.publish("news", "x")
        assert result.publication == Publication("news", "x", offset=0, epoch="")
        history = await broker.history("news")
        assert history.publications == []
        assert history.position.offset == 0

    async def test_publish_without_history_leaves_stream_alone(self, broker: Broker) -> None:
        await broker.publish("news", 1, history=HISTORY)
        await broker.publish("news", "unstored")
        second = await broker.publish("news", 2, history=HISTORY)
        assert second.publication.offset == 2
        assert [p.data for p in (await broker.history("news")).publications] == [1, 2]

    async def test_history_keeps_the_last_size_publications(self, broker: Broker) -> None:
        options = HistoryOptions(size=3, ttl=2.0)
        for i in range(1, 8):
            await broker.publish("news", i, history=options)
        history = await broker.history("news")
        assert offsets(history.publications) == [5, 6, 7]
        assert [p.data for p in history.publications] == [5, 6, 7]
        assert history.position.offset == 7

    async def test_since_returns_exactly_the_missed_publications(self, broker: Broker) -> None:
        for i in range(1, 6):
            await broker.publish("news", i, history=HISTORY)
        epoch = (await broker.history("news", limit=0)).position.epoch
        history = await broker.history("news", since=Position(epoch, 2))
        assert history.recovered
        assert offsets(history.publications) == [3, 4, 5]
        assert history.position == Position(epoch, 5)

    async def test_since_the_top_returns_nothing_but_is_recovered(self, broker: Broker) -> None:
        for i in range(3):
            await broker.publish("news", i, history=HISTORY)
        position = (await broker.history("news", limit=0)).position
        history = await broker.history("news", since=position)
        assert history.recovered
        assert history.publications == []

    async def test_since_just_before_the_oldest_kept_is_recovered(self, broker: Broker) -> None:
        options = HistoryOptions(size=3, ttl=2.0)
        for i in range(6):
            await broker.publish("news", i, history=options)
        epoch = (await broker.history("news")).position.epoch
        history = await broker.history("news", since=Position(epoch, 3))
        assert history.recovered
        assert offsets(history.publications) == [4, 5, 6]

    async def test_since_older_than_kept_is_not_recovered(self, broker: Broker) -> None:
        options = HistoryOptions(size=3, ttl=2.0)
        for i in range(6):
            await broker.publish("news", i, history=options)
        epoch = (await broker.history("news")).position.epoch
        history = await broker.history("news", since=Position(epoch, 2))
        assert not history.recovered
        assert history.publications == []
        assert history.position == Position(epoch, 6)

    async def test_since_in_another_epoch_is_not_recovered(self, broker: Broker) -> None:
        for i in range(3):
            await broker.publish("news", i, history=HISTORY)
        position = (await broker.history("news")).position
        history = await broker.history("news", since=Position(position.epoch + "x", 1))
        assert not history.recovered
        assert history.publications == []
        assert history.position == position

    async def test_since_beyond_the_top_is_not_recovered(self, broker: Broker) -> None:
        for i in range(3):
            await broker.publish("news", i, history=HISTORY)
        position = (await broker.history("news")).position
        history = await broker.history("news", since=Position(position.epoch, 4))
        assert not history.recovered
        assert history.publications == []

    async def test_since_with_limit_returns_the_oldest_missed(self, broker: Broker) -> None:
        for i in range(6):
            await broker.publish("news", i, history=HISTORY)
        epoch = (await broker.history("news")).position.epoch
        history = await broker.history("news", since=Position(epoch, 1), limit=2)
        assert history.recovered
        assert offsets(history.publications) == [2, 3]
        assert history.position == Position(epoch, 6)

    async def test_limit_without_since_returns_the_latest(self, broker: Broker) -> None:
        for i in range(6):
            await broker.publish("news", i, history=HISTORY)
        history = await broker.history("news", limit=2)
        assert offsets(history.publications) == [5, 6]
        assert offsets((await broker.history("news", limit=100)).publications) == list(range(1, 7))

    async def test_limit_zero_returns_only_the_position(self, broker: Broker) -> None:
        for i in range(3):
            await broker.publish("news", i, history=HISTORY)
        history = await broker.history("news", limit=0)
        assert history.publications == []
        assert history.position.offset == 3
        assert history.recovered

    async def test_position_before_first_publication_keeps_its_epoch(self, broker: Broker) -> None:
        before = await broker.history("news")
        assert before.publications == []
        assert before.position.offset == 0
        assert before.position.epoch
        first = await broker.publish("news", "first", history=HISTORY)
        assert first.publication.offset == 1
        assert first.publication.epoch == before.position.epoch
        history = await broker.history("news", since=before.position)
        assert history.recovered
        assert [p.data for p in history.publications] == ["first"]

    async def test_stream_lives_while_published_to_within_ttl(
        self, broker: Broker, clock: Clock
    ) -> None:
        first = await broker.publish("news", 1, history=HISTORY)
        for _ in range(3):
            clock.advance(HISTORY.ttl * 0.75)
            result = await broker.publish("news", 2, history=HISTORY)
        assert result.publication.epoch == first.publication.epoch
        assert result.publication.offset == 4
        clock.advance(HISTORY.ttl * 0.75)
        history = await broker.history("news", since=Position(first.publication.epoch, 1))
        assert history.recovered
        assert offsets(history.publications) == [2, 3, 4]

    async def test_stream_expires_ttl_after_last_publication(
        self, broker: Broker, clock: Clock
    ) -> None:
        old = (await broker.publish("news", "old", history=HISTORY)).publication
        clock.advance(HISTORY.ttl * 1.5)
        gone = await broker.history("news")
        assert gone.publications == []
        assert gone.position.offset == 0
        assert gone.position.epoch != old.epoch
        stale = await broker.history("news", since=Position(old.epoch, old.offset))
        assert not stale.recovered
        assert stale.publications == []

    async def test_publish_after_ttl_starts_new_epoch_at_offset_one(
        self, broker: Broker, clock: Clock
    ) -> None:
        await broker.publish("news", 1, history=HISTORY)
        old = (await broker.publish("news", 2, history=HISTORY)).publication
        clock.advance(HISTORY.ttl * 1.5)
        new = (await broker.publish("news", 3, history=HISTORY)).publication
        assert new.offset == 1
        assert new.epoch != old.epoch
        history = await broker.history("news", since=Position(old.epoch, 1))
        assert not history.recovered
        assert [p.data for p in (await broker.history("news")).publications] == [3]

    async def test_remove_history_starts_new_epoch(self, broker: Broker) -> None:
        old = (await broker.publish("news", 1, history=HISTORY)).publication
        await broker.remove_history("news")
        await broker.remove_history("never had one")
        empty = await broker.history("news")
        assert empty.publications == []
        assert empty.position.offset == 0
        assert empty.position.epoch != old.epoch
        new = (await broker.publish("news", 2, history=HISTORY)).publication
        assert new.offset == 1
        assert new.epoch == empty.position.epoch
        stale = await broker.history("news", since=Position(old.epoch, 1))
        assert not stale.recovered

    # Idempotency.

    async def test_same_idempotency_key_within_window_is_a_duplicate(
        self, broker: Broker, recorder: Recorder, clock: Clock
    ) -> None:
        await broker.subscribe("news")
        first = await broker.publish(
            "news", "x", history=HISTORY, idempotency_key="k", idempotency_window=1.0
        )
        assert not first.duplicate
        clock.advance(0.5)
        again = await broker.publish(
            "news", "retry", history=HISTORY, idempotency_key="k", idempotency_window=1.0
        )
        assert again.duplicate
        assert again.publication == first.publication
        await broker.publish("news", "marker", history=HISTORY)
        await recorder.wait_for(2)
        assert recorder.data() == ["x", "marker"]
        history = await broker.history("news")
        assert [p.data for p in history.publications] == ["x", "marker"]
        assert offsets(history.publications) == [1, 2]

    async def test_idempotency_key_after_window_publishes_again(
        self, broker: Broker, recorder: Recorder, clock: Clock
    ) -> None:
        await broker.subscribe("news")
        await broker.publish(
            "news", "x", history=HISTORY, idempotency_key="k", idempotency_window=1.0
        )
        clock.advance(1.5)
        again = await broker.publish(
            "news", "y", history=HISTORY, idempotency_key="k", idempotency_window=1.0
        )
        assert not again.duplicate
        assert again.publication.offset == 2
        await recorder.wait_for(2)
        assert recorder.data() == ["x", "y"]

    async def test_idempotency_keys_are_per_channel(self, broker: Broker) -> None:
        a = await broker.publish("a", 1, history=HISTORY, idempotency_key="k")
        b = await broker.publish("b", 2, history=HISTORY, idempotency_key="k")
        assert not a.duplicate
        assert not b.duplicate
        assert b.publication.channel == "b"
        assert b.publication.data == 2

    async def test_idempotency_without_history(self, broker: Broker, recorder: Recorder) -> None:
        await broker.subscribe("news")
        first = await broker.publish("news", "x", idempotency_key="k")
        again = await broker.publish("news", "x", idempotency_key="k")
        other = await broker.publish("news", "x", idempotency_key="other")
        assert again.duplicate
        assert again.publication == first.publication
        assert not other.duplicate
        await recorder.wait_for(2)
        assert recorder.data() == ["x", "x"]

    # Presence.

    async def test_presence_add_refresh_and_remove(self, broker: Broker) -> None:
        assert await broker.presence("room") == {}
        assert await broker.presence_count("room") == (0, 0)
        await broker.add_presence("room", ALICE, ttl=2.0)
        await broker.add_presence("room", BOB, ttl=2.0)
        assert await broker.presence("room") == {"c1": ALICE, "c3": BOB}
        renamed = ClientInfo("c1", "alice", {"status": "away"})
        await broker.add_presence("room", renamed, ttl=2.0)
        assert await broker.presence("room") == {"c1": renamed, "c3": BOB}
        await broker.remove_presence("room", "c1")
        await broker.remove_presence("room", "c1")
        await broker.remove_presence("room", "nobody")
        assert await broker.presence("room") == {"c3": BOB}
        assert await broker.presence("elsewhere") == {}

    async def test_presence_counts_clients_and_distinct_users(self, broker: Broker) -> None:
        await broker.add_presence("room", ALICE, ttl=2.0)
        await broker.add_presence("room", ALICE_TOO, ttl=2.0)
        await broker.add_presence("room", BOB, ttl=2.0)
        assert await broker.presence_count("room") == (3, 2)
        await broker.remove_presence("room", BOB.client)
        assert await broker.presence_count("room") == (2, 1)

    async def test_presence_expires_unless_refreshed(self, broker: Broker, clock: Clock) -> None:
        await broker.add_presence("room", ALICE, ttl=2.0)
        await broker.add_presence("room", BOB, ttl=2.0)
        clock.advance(1.5)
        await broker.add_presence("room", BOB, ttl=2.0)  # refresh
        assert set(await broker.presence("room")) == {"c1", "c3"}
        clock.advance(1.0)
        assert await broker.presence("room") == {"c3": BOB}
        assert await broker.presence_count("room") == (1, 1)
        clock.advance(1.5)
        assert await broker.presence("room") == {}
        assert await broker.presence_count("room") == (0, 0)

    async def test_refresh_presence_extends_every_entry_at_once(
        self, broker: Broker, clock: Clock
    ) -> None:
        await broker.add_presence("room", ALICE, ttl=2.0)
        await broker.add_presence("hall", BOB, ttl=2.0)
        clock.advance(1.5)
        # ALICE_TOO is new: a refresh also records an entry that was not there.
        await broker.refresh_presence(
            [("room", ALICE), ("room", ALICE_TOO), ("hall", BOB)], ttl=2.0
        )
        clock.advance(1.5)
        assert await broker.presence("room") == {"c1": ALICE, "c2": ALICE_TOO}
        assert await broker.presence("hall") == {"c3": BOB}
        await broker.refresh_presence([], ttl=2.0)
        clock.advance(1.0)
        assert await broker.presence("room") == {}

    async def test_presence_pages_cover_every_client_once_in_id_order(
        self, broker: Broker, clock: Clock
    ) -> None:
        clients = [ClientInfo(f"c{i:03}", f"u{i % 7}") for i in range(25)]
        await broker.refresh_presence([("room", who) for who in clients], ttl=2.0)
        page = await broker.presence_page("room", limit=10)
        seen = [page]
        while page.next_cursor is not None and len(seen) < 10:
            page = await broker.presence_page("room", cursor=page.next_cursor, limit=10)
            seen.append(page)
        assert [len(p.clients) for p in seen] == [10, 10, 5]
        walked = [client for p in seen for client in p.clients]
        assert walked == sorted(who.client for who in clients)
        assert seen[2].clients["c024"] == clients[24]
        assert await broker.presence_count("room") == (25, 7)
        # A page ending exactly at the last client says there is no more.
        exact = await broker.presence_page("room", cursor="c014", limit=10)
        assert list(exact.clients) == [f"c{i:03}" for i in range(15, 25)]
        assert exact.next_cursor is None
        # Removed and expired clients are not in any page.
        await broker.remove_presence("room", "c000")
        await broker.add_presence("room", BOB, ttl=10.0)
        clock.advance(3.0)
        assert await broker.presence_page("room", limit=10) == PresencePage({"c3": BOB})
        assert await broker.presence_count("room") == (1, 1)
        assert await broker.presence_page("elsewhere", cursor="x", limit=5) == PresencePage({})

    # Occupancy.

    async def test_first_occupy_in_the_cluster_occupies_and_last_vacate_vacates(
        self, cluster: list[Broker]
    ) -> None:
        # Node by node: only the first to occupy had no other node holding the channel,
        # and only the last to vacate leaves none.
        occupied = [await node.occupy("room") for node in cluster]
        assert occupied == [True] + [False] * (len(cluster) - 1)
        vacated = [await node.vacate("room") for node in cluster]
        assert vacated == [False] * (len(cluster) - 1) + [True]
        # Vacated: the next first subscriber occupies it again.
        assert await cluster[-1].occupy("room")
        assert await cluster[-1].vacate("room")

    async def test_occupancy_is_per_channel(self, cluster: list[Broker]) -> None:
        assert await cluster[0].occupy("a")
        assert await cluster[-1].occupy("b")
        assert await cluster[-1].vacate("b")
        assert await cluster[0].vacate("a")

    async def test_vacate_in_another_order_than_occupy(self, cluster: list[Broker]) -> None:
        for node in cluster:
            await node.occupy("room")
        vacated = [await node.vacate("room") for node in reversed(cluster)]
        assert vacated == [False] * (len(cluster) - 1) + [True]

    # Property: recovery from any position.

    @settings(
        max_examples=100,
        deadline=None,
        # One contract, several brokers: each subclass runs it (differing executors).
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        size=st.integers(min_value=0, max_value=6),
        count=st.integers(min_value=0, max_value=15),
        limit=st.none() | st.integers(min_value=0, max_value=8),
    )
    async def test_since_any_recorded_position_returns_exactly_what_followed(
        self, broker: Broker, size: int, count: int, limit: int | None
    ) -> None:
        channel = f"property-{next(_example_ids)}"
        options = HistoryOptions(size=size, ttl=60.0)
        # positions[k] is the position after k publications (k=0: before the first).
        positions = [(await broker.history(channel, limit=0)).position]
        published: list[Publication] = []
        for i in range(count):
            published.append((await broker.publish(channel, i, history=options)).publication)
            positions.append((await broker.history(channel, limit=0)).position)
        top = positions[-1]
        assert top == Position(positions[0].epoch, count)
        for k, position in enumerate(positions):
            assert position == Position(top.epoch, k)
            history = await broker.history(channel, since=position, limit=limit)
            assert history.position == top
            if count - k <= size:  # everything after position is still kept
                missed = published[k:]
                expected = missed if limit is None else missed[:limit]
                assert history.recovered
                assert history.publications == expected
                assert offsets(history.publications) == list(range(k + 1, k + 1 + len(expected)))
            else:
                assert not history.recovered
                assert history.publications == []
