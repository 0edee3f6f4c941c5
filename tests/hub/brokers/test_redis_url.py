"""Reading ``[broker] url``: the three Redis topologies, and URLs that are none of them
refused with a message that never shows the password."""

from __future__ import annotations

import pytest

from backchannel.hub.brokers.redis_url import describe_target, parse_redis_url


def test_a_plain_redis_url_is_one_server() -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h", "unix:///run/redis.sock"):
        assert parse_redis_url(url).kind == "single"


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    target = parse_redis_url("rediss+cluster://me:s%40cret@10.0.0.5:7000,[::1]:7001/")
    assert target.kind == "cluster"
    assert target.hosts == (("10.0.0.5", 7000), ("::1", 7001))
    assert (target.tls, target.username, target.password) == (True, "me", "s@cret")
    assert describe_target(target) == "redis cluster via 10.0.0.5:7000,[::1]:7001"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    url = "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2?sentinel_password=spw"
    target = parse_redis_url(url)
    assert target.kind == "sentinel"
    assert target.hosts == (("s1", 26379), ("s2", 26379))
    assert (target.service, target.db, target.password) == ("mymaster", 2, "pw")
    assert target.sentinel_password == "spw"
    assert describe_target(target) == "redis sentinel s1:26379,s2:26379, master 'mymaster', db 2"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hunter2@h:1/", "not a Redis URL"),
        ("redis://hunter2@h:port/0", "bad port"),
        ("redis+cluster://:hunter2@h1:7000,h2/", "host:port"),
        ("redis+cluster://:hunter2@h1:7000/0", "no database"),
        ("redis+sentinel://:hunter2@s1:26379/", "master's name"),
        ("redis+sentinel://:hunter2@s1:26379/m/x", "a number"),
        ("redis+sentinel://:hunter2@s1:26379/m?db=1", "unknown option"),
    ],
)
def test_other_urls_are_refused_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_redis_url(url)
    assert "hunter2" not in str(caught.value)
