"""The session outbox: bounded in bytes and in messages, drained in order; and the
slow-consumer policy it triggers, one rule for every transport."""

from __future__ import annotations

import json
from typing import Any

from helpers.stalled import Stalled
from hypothesis import given
from hypothesis import strategies as st

from backchannel.hub import codes
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.outbox import Outbox, text_size


def test_text_size_is_utf8_bytes() -> None:
    assert text_size("abc") == 3
    assert text_size("é") == 2
    assert text_size("😀") == 4


def test_put_refuses_past_either_bound_and_queues_nothing() -> None:
    by_count = Outbox(max_bytes=1_000_000, max_messages=2)
    assert by_count.put("a", 1) and by_count.put("b", 1)
    assert not by_count.put("c", 1)
    assert by_count.texts() == ["a", "b"] and by_count.size == 2
    by_bytes = Outbox(max_bytes=10, max_messages=100)
    assert by_bytes.put("x" * 6, 6)
    assert not by_bytes.put("y" * 5, 5)
    assert by_bytes.put("z" * 4, 4)  # exactly at the bound fits
    assert by_bytes.texts() == ["x" * 6, "z" * 4] and by_bytes.size == 10


def test_force_passes_the_bounds_for_the_last_word() -> None:
    outbox = Outbox(max_bytes=1, max_messages=1)
    assert outbox.put("a", 1)
    outbox.force('{"push":"disconnect"}')
    assert len(outbox) == 2 and outbox.texts()[-1] == '{"push":"disconnect"}'


@given(st.lists(st.text(max_size=50), max_size=60), st.integers(1, 200))
def test_take_drains_in_order_within_max_bytes(texts: list[str], max_bytes: int) -> None:
    outbox = Outbox(max_bytes=10**9, max_messages=10**6)
    for text in texts:
        assert outbox.put(text, text_size(text))
    drained: list[str] = []
    while outbox:
        batch = outbox.take(max_bytes)
        assert batch  # always at least one
        assert len(batch) == 1 or sum(map(text_size, batch)) <= max_bytes
        drained += batch
    assert drained == texts and outbox.size == 0


def options(**limits: Any) -> HubOptions:
    return HubOptions(
        anonymous=True,
        namespaces={
            "cut": ChannelOptions(slow_consumer="disconnect"),
            "drop": ChannelOptions(slow_consumer="drop", history_size=100),
        },
        **limits,
    )


async def stalled_subscriber(hub: Hub, channel: str) -> tuple[Any, Stalled]:
    transport = Stalled()
    session = hub.open_session(transport)
    await hub.connect_session(session)
    await hub.subscribe_session(session, channel)
    hub.go_live(session, channel)
    return session, transport


async def test_overflow_by_count_disconnects_under_the_disconnect_policy() -> None:
    async with Hub(options(outbox_max_messages=5)) as hub:
        session, transport = await stalled_subscriber(hub, "cut:a")
        for n in range(5):
            await hub.publish("cut:a", n)
        assert not session.closed and len(session.outbox) == 5 and transport.wakes == 1
        await hub.publish("cut:a", 5)
        assert session.closed and transport.closed_with == codes.SLOW_CONSUMER
        # The backlog is dropped; the client still learns why.
        assert [t for t in session.outbox.texts()] == [
            '{"push":"disconnect","code":3002,"reason":"slow consumer","reconnect":true}'
        ]
        assert hub.statistics().slow_consumers == 1


async def test_overflow_by_bytes_drops_under_the_drop_policy_and_the_session_stays() -> None:
    async with Hub(options(outbox_max_bytes=1100)) as hub:
        session, transport = await stalled_subscriber(hub, "drop:a")
        for n in range(3):
            await hub.publish("drop:a", "x" * 250 + str(n))
        assert len(session.outbox) == 3 and session.outbox.size > 825
        await hub.publish("drop:a", "x" * 250 + "3")  # does not fit: dropped
        assert not session.closed and transport.closed_with is None
        assert hub.statistics().slow_consumers == 1
        # The client is told at once (the small notice fits where the publication did
        # not), after what it has not read yet: it reads offset 4 from history.
        *publications, notice = session.outbox.texts()
        assert len(publications) == 3
        epoch = json.loads(publications[0])["epoch"]
        assert json.loads(notice) == {
            "push": "dropped",
            "channel": "drop:a",
            "epoch": epoch,
            "offset": 4,
        }
        session.outbox.take(10**6)  # the client catches up
        await hub.publish("drop:a", "after")
        (text,) = session.outbox.texts()
        assert '"offset":5' in text


async def test_overflow_by_count_drops_under_the_drop_policy() -> None:
    async with Hub(options(outbox_max_messages=2)) as hub:
        session, _ = await stalled_subscriber(hub, "drop:a")
        for n in range(4):
            await hub.publish("drop:a", n)
        assert not session.closed and len(session.outbox) == 2
        assert hub.statistics().slow_consumers == 2
        # No room for the notice either: it waits, and names the last one dropped. Once
        # the client reads, it comes next, before anything published later.
        (first,) = session.outbox.take(1)
        assert json.loads(first)["offset"] == 1
        texts = [json.loads(text) for text in session.outbox.texts()]
        assert [(t["push"], t["offset"]) for t in texts] == [("publication", 2), ("dropped", 4)]
        session.outbox.take(10**6)
        await hub.publish("drop:a", 4)
        (text,) = session.outbox.texts()
        assert json.loads(text)["offset"] == 5


def test_a_notice_waits_for_room_and_goes_before_later_texts() -> None:
    outbox = Outbox(max_bytes=100, max_messages=2)
    assert outbox.put("a", 1) and outbox.put("b", 1)
    outbox.note("chan", "dropped 1")
    outbox.note("chan", "dropped 2")  # the newer notice of a key replaces the older
    outbox.note("other", "dropped x")
    assert outbox.texts() == ["a", "b"] and outbox.size == 2
    assert outbox.take(1) == ["a"]
    # Room for one: the oldest waiting notice goes in; the other waits again.
    assert outbox.texts() == ["b", "dropped 2"]
    assert not outbox.put("c", 1)  # full, and the notice stays ahead of it
    assert outbox.take(100) == ["b", "dropped 2"]
    assert outbox.texts() == ["dropped x"]
    assert outbox.put("c", 1)
    assert outbox.texts() == ["dropped x", "c"]
    outbox.clear()
    outbox.note("k", "n")
    assert outbox.texts() == ["n"]  # room now: queued at once


async def test_a_reply_that_does_not_fit_disconnects_whatever_the_channel_policy() -> None:
    async with Hub(options(outbox_max_messages=3)) as hub:
        session, transport = await stalled_subscriber(hub, "drop:a")
        for n in range(3):
            await hub.publish("drop:a", n)
        hub.send(session, '{"id":9,"result":{}}')
        assert session.closed and transport.closed_with == codes.SLOW_CONSUMER


async def test_overflow_by_bytes_disconnects_under_the_disconnect_policy() -> None:
    async with Hub(options(outbox_max_bytes=500)) as hub:
        session, transport = await stalled_subscriber(hub, "cut:a")
        await hub.publish("cut:a", "x" * 300)
        assert not session.closed
        await hub.publish("cut:a", "y" * 300)
        assert session.closed and transport.closed_with == codes.SLOW_CONSUMER
