"""MemoryBroker: the broker contract, and what only the in-process broker promises."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from hub.brokers.broker_contract import HISTORY, BrokerContract, ManualClock, Recorder

from backchannel.hub.brokers import HistoryOptions, MemoryBroker
from backchannel.hub.wire import ClientInfo, Publication


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def recorder() -> Recorder:
    # The contract's own recorder fixture lives in its class; the tests below need one too.
    return Recorder()


@pytest.fixture
async def broker(clock: ManualClock, recorder: Recorder) -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(clock=clock)
    await broker.start(recorder)
    yield broker
    await broker.close()


class TestMemoryBroker(BrokerContract):
    pass


# What only MemoryBroker promises.


async def test_delivery_happens_before_publish_returns(
    broker: MemoryBroker, recorder: Recorder
) -> None:
    await broker.subscribe("news")
    result = await broker.publish("news", "x", history=HISTORY)
    assert recorder.events == [("publication", result.publication)]
    await broker.publish_join("news", ClientInfo("c1", "u1"))
    assert recorder.events[-1] == ("join", "news", ClientInfo("c1", "u1"))
    await broker.publish_leave("news", ClientInfo("c1", "u1"))
    assert recorder.events[-1] == ("leave", "news", ClientInfo("c1", "u1"))


async def test_publish_after_close_still_stores_history(
    broker: MemoryBroker, recorder: Recorder
) -> None:
    await broker.subscribe("news")
    await broker.close()
    result = await broker.publish("news", "stored", history=HISTORY)
    assert result.publication.offset == 1
    assert (await broker.history("news")).publications == [result.publication]
    assert recorder.events == []


async def test_start_after_close_is_refused(broker: MemoryBroker, recorder: Recorder) -> None:
    await broker.close()
    with pytest.raises(RuntimeError):
        await broker.start(recorder)


async def test_nothing_is_delivered_before_start(clock: ManualClock) -> None:
    broker = MemoryBroker(clock=clock)
    await broker.subscribe("news")
    result = await broker.publish("news", "x", history=HISTORY)
    assert result.publication.offset == 1
    recorder = Recorder()
    await broker.start(recorder)
    await broker.publish("news", "y")
    assert recorder.data() == ["y"]


class FailingHandler(Recorder):
    def on_publication(self, publication: Publication) -> None:
        super().on_publication(publication)
        raise RuntimeError("handler bug")


async def test_handler_error_is_logged_not_raised(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    broker = MemoryBroker(clock=clock)
    handler = FailingHandler()
    await broker.start(handler)
    await broker.subscribe("news")
    with caplog.at_level(logging.ERROR, logger="backchannel.hub"):
        result = await broker.publish("news", "x", history=HISTORY, idempotency_key="k")
    assert handler.data() == ["x"]
    assert "handler bug" in caplog.text
    assert (await broker.history("news")).publications == [result.publication]
    assert (await broker.publish("news", "x", idempotency_key="k")).duplicate


async def test_idempotency_keys_per_channel_are_bounded(
    broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MemoryBroker, "MAX_IDEMPOTENCY_KEYS", 3)
    for key in "abcd":
        await broker.publish("news", key, idempotency_key=key)
    # "a" was the oldest and was forgotten to make room for "d"; the rest are remembered.
    assert not (await broker.publish("news", "a", idempotency_key="a")).duplicate
    assert (await broker.publish("news", "d", idempotency_key="d")).duplicate
    assert len(broker._idempotency["news"]) == 3


async def test_expired_state_is_swept_from_untouched_channels(
    broker: MemoryBroker, clock: ManualClock
) -> None:
    options = HistoryOptions(size=5, ttl=1.0)
    for i in range(50):
        channel = f"c{i}"
        await broker.publish(channel, i, history=options, idempotency_key="k", idempotency_window=1)
        await broker.add_presence(channel, ClientInfo("c", "u"), ttl=1.0)
    clock.advance(MemoryBroker.SWEEP_INTERVAL + 1)
    await broker.publish("other", "triggers the sweep")
    assert broker._streams == {}
    assert broker._idempotency == {}
    assert broker._presence == {}


async def test_streams_made_by_reading_a_position_expire_too(
    broker: MemoryBroker, clock: ManualClock
) -> None:
    # A client may read the position of many channel names that never get a publication.
    for i in range(100):
        result = await broker.history(f"quiet{i}", limit=0)
        assert result.position.offset == 0
    assert len(broker._streams) == 100
    clock.advance(MemoryBroker.EMPTY_STREAM_TTL + MemoryBroker.SWEEP_INTERVAL + 1)
    await broker.publish("other", "triggers the sweep")
    assert broker._streams == {}


async def test_expired_idempotency_keys_are_purged_on_publish(
    broker: MemoryBroker, clock: ManualClock
) -> None:
    for i in range(100):
        await broker.publish("news", i, idempotency_key=str(i), idempotency_window=1.0)
    clock.advance(2.0)
    await broker.publish("news", "new", idempotency_key="new", idempotency_window=1.0)
    assert list(broker._idempotency["news"]) == ["new"]


async def test_negative_history_options_and_limit_are_refused(broker: MemoryBroker) -> None:
    with pytest.raises(ValueError):
        await broker.publish("news", 1, history=HistoryOptions(size=-1, ttl=1.0))
    with pytest.raises(ValueError):
        await broker.history("news", limit=-1)


async def test_expired_key_behind_a_longer_window_is_not_a_duplicate(
    broker: MemoryBroker, clock: ManualClock
) -> None:
    # Purging stops at the first live key, so "short" stays stored after it expires.
    await broker.publish("news", 1, idempotency_key="long", idempotency_window=10.0)
    await broker.publish("news", 2, idempotency_key="short", idempotency_window=1.0)
    clock.advance(2.0)
    assert not (await broker.publish("news", 2, idempotency_key="short")).duplicate
    assert (await broker.publish("news", 1, idempotency_key="long")).duplicate


async def test_the_work_per_publish_does_not_grow_with_history_or_keys(
    broker: MemoryBroker, clock: ManualClock
) -> None:
    """Entries examined per publish (history trimmed, idempotency keys looked up and
    purged) stay a small constant whether the channel holds 10 or 10 000 of them."""
    window = 50.0  # keys live 50 publishes: the oldest expires as each new one comes

    async def examined_by(channel: str, size: int, count: int) -> list[int]:
        options = HistoryOptions(size=size, ttl=1e9)
        per_publish = []
        for i in range(count):
            clock.advance(1.0)
            before = broker.examined
            await broker.publish(
                channel, i, history=options, idempotency_key=str(i), idempotency_window=window
            )
            per_publish.append(broker.examined - before)
        return per_publish

    small = await examined_by("small", 10, 2_000)
    large = await examined_by("large", 10_000, 12_000)
    # Once the history is full and keys expire: one trim, one lookup, two keys purged
    # at most (the expired one and the live one that stops the purge).
    assert max(small[100:]) <= 4
    assert max(large[10_100:]) <= 4
    assert sum(large[10_100:]) / len(large[10_100:]) == sum(small[100:]) / len(small[100:])
    assert len((await broker.history("large")).publications) == 10_000
