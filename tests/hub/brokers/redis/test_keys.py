"""Key names: every name of one channel in one Redis Cluster hash slot, whatever the
channel's name, and distinct channels never sharing a name."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from backchannel.hub.brokers.redis.keys import Keys

NAMES = ["room", "a:b", "", "}", "{", "a}b", "{x}", "#1", "{#x}y", "é:ü", "a}b{c}d", "x" * 300]


def names_of(keys: Keys, channel: str) -> list[str]:
    return [
        keys.stream(channel),
        keys.log(channel),
        keys.idempotency(channel, "k1"),
        keys.idempotency(channel, "}{"),
        keys.channel(channel),
        keys.presence(channel),
        keys.presence_info(channel),
        keys.presence_order(channel),
        keys.occupancy(channel),
    ]


@pytest.mark.parametrize("channel", NAMES)
def test_every_name_of_a_channel_is_in_one_hash_slot(channel: str) -> None:
    keys = Keys("bc")
    slots = {key_slot(name.encode()) for name in names_of(keys, channel)}
    assert len(slots) == 1


def test_channels_spread_over_slots_and_never_share_a_name() -> None:
    keys = Keys("bc")
    all_names = [name for channel in NAMES for name in names_of(keys, channel)]
    assert len(set(all_names)) == len(all_names)
    # The tag is the channel, not something common to all: channels spread.
    assert len({key_slot(keys.stream(f"room{i}").encode()) for i in range(100)}) > 90


@pytest.mark.parametrize("channel", NAMES)
def test_a_pubsub_name_gives_back_its_channel(channel: str) -> None:
    keys = Keys("bc")
    assert keys.channel_of(keys.channel(channel)) == channel
    assert keys.channel_of(keys.control) is None
    assert keys.channel_of(keys.node("n1")) is None


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keys("a{b}")
