"""Reading ``[broker] url``: which Redis topology it names, without importing redis (the
config checks it at load time; the ``redis`` extra may not be installed).

Three forms (docs/config.md):

* one Redis: what redis-py's ``Redis.from_url`` takes (``redis://``, ``rediss://``,
  ``unix://``);
* Redis Cluster: ``redis+cluster://[[user]:password@]host:port[,host:port...]/``
  (``rediss+cluster://`` for TLS): the seed nodes, any of the cluster's masters or
  replicas; the client learns the rest from them;
* Redis Sentinel: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/name[/db]``
  (``rediss+sentinel://`` for TLS to the master): the sentinels and the name of the
  master they watch; the password is the master's, ``?sentinel_password=...`` the
  sentinels' own when they have one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisTarget", "describe_target", "parse_redis_url"]

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a broker URL names; ``kind`` is "single", "cluster" or "sentinel"."""

    kind: str
    url: str
    #: Cluster seed nodes, or the sentinels.
    hosts: tuple[tuple[str, int], ...] = ()
    tls: bool = False
    username: str | None = None
    password: str | None = None
    #: Sentinel only: the master's name, its database, the sentinels' password.
    service: str = ""
    db: int = 0
    sentinel_password: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisTarget:
    """The topology ``url`` names; ValueError (a message without the URL, which may
    carry a password) when it is not one of the forms of the module docstring."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (raises for a port that is not a number or too big)
        except ValueError:
            raise ValueError("not a Redis URL: bad port") from None
        return RedisTarget("single", url)
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError("not a Redis URL")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_host(item) for item in hostlist.split(","))
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    tls = scheme.startswith("rediss")
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/") or options:
            raise ValueError("a redis+cluster:// URL takes no database and no options")
        return RedisTarget("cluster", url, hosts, tls=tls, username=username, password=password)
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("a redis+sentinel:// URL needs the master's name: /NAME")
    if not db.isdigit() and db:
        raise ValueError("a redis+sentinel:// URL's database is a number: /NAME/DB")
    sentinel_password = options.pop("sentinel_password", None)
    if options:
        raise ValueError(f"unknown option in the URL: {sorted(options)[0]}")
    return RedisTarget(
        "sentinel",
        url,
        hosts,
        tls=tls,
        username=username,
        password=password,
        service=unquote(service),
        db=int(db or 0),
        sentinel_password=sentinel_password,
    )


def _host(item: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not a Redis URL: write each node as host:port")
    return host.strip("[]"), int(port)


def describe_target(target: RedisTarget) -> str:
    """The URL in a few words, never the password."""
    places = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in target.hosts)
    if target.kind == "cluster":
        return f"redis cluster via {places}"
    return f"redis sentinel {places}, master {target.service!r}, db {target.db}"
