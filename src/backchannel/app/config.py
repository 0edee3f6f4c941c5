"""The standalone server's configuration: a TOML file, overridden by environment variables.

Sections and keys are documented in docs/config.md. Every scalar setting ``[section] key``
can be overridden by the environment variable ``BACKCHANNEL_SECTION_KEY`` (for example
``BACKCHANNEL_SERVER_PORT=9000``, ``BACKCHANNEL_API_KEY=...``); channel namespaces are
set in the file only. Unknown sections, keys and ``BACKCHANNEL_*`` variables are refused,
and so are values out of range, so a typo is an error rather than a setting silently
ignored. Each error is an :class:`InvalidArgument` whose message names the setting or
variable and fits on one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import InvalidArgument
from ..hub import ChannelOptions, HubOptions, wire
from ..hub.brokers.redis_url import describe_target, parse_redis_url

__all__ = [
    "AdminConfig",
    "AlertsConfig",
    "ApiConfig",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "LogConfig",
    "LongPollConfig",
    "MetricsConfig",
    "ProxyConfig",
    "ServerConfig",
    "SseConfig",
    "WebhooksConfig",
    "load_config",
]


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    #: PEM certificate chain and key: serve https:// and wss://.
    tls_cert: str = ""
    tls_key: str = ""
    #: Accept WebSocket upgrades at ``/ws``. False leaves long polling only (what a
    #: client behind a proxy that strips upgrades sees).
    websocket: bool = True
    #: Origins allowed for WebSocket and, with CORS, for long polling; empty: any origin
    #: for WebSocket, same-origin only for long polling. "*" allows every origin.
    origins: list[str] = field(default_factory=list)
    #: New connections (WebSocket upgrades and long-poll opens) per second per client
    #: address, with bursts of ``open_burst``: one address cannot flood the hub with
    #: sessions. 429 past it.
    open_rate: float = 20.0
    open_burst: int = 100
    #: Addresses of your reverse proxies. For a request from one of them, the client's
    #: address (what rate limits count by) is the last X-Forwarded-For entry that is not
    #: a proxy; otherwise every client would share the proxy's bucket.
    trusted_proxies: list[str] = field(default_factory=list)
    #: Largest body of an HTTP request (API, long-poll send): 1 MiB. 413 past it.
    max_body_size: int = 2**20
    #: Serve the demo chat page at ``/`` and ``POST /demo/token``, which gives anyone a
    #: token for any user name signed with the real secret: for trying backchannel out,
    #: never for production, so off unless asked for (``serve --demo``, ``make serve``).
    demo: bool = False


@dataclass(slots=True)
class AuthConfig:
    #: HS256 secret of connection tokens. Empty: a random one per process (tokens from
    #: ``backchannel token`` then cannot work; the demo's still do).
    secret: str = ""
    #: PEM file of an RS256 public key, to accept tokens signed by your own backend.
    public_key_file: str = ""
    #: Let clients connect without a token (user "").
    anonymous: bool = False


@dataclass(slots=True)
class ApiConfig:
    #: The HTTP API's key (``Authorization: apikey KEY``). Empty: a random one per
    #: process, printed at start.
    key: str = ""
    #: Requests per second per client address, bursts of ``burst``: 429 past it.
    rate: float = 200.0
    burst: int = 400


@dataclass(slots=True)
class BrokerConfig:
    #: Redis URL (``redis://``, ``rediss://`` for TLS, ``redis://:password@host:6379/0``):
    #: several nodes then act as one hub. Empty: the in-memory broker (one process).
    url: str = ""
    #: Prefix of every key and pub/sub channel: deployments sharing one Redis stay apart.
    prefix: str = "backchannel"

    def describe(self) -> str:
        """The broker in a few words, for the server's banner: never the password."""
        if not self.url:
            return "memory (this process only)"
        try:
            target = parse_redis_url(self.url)
        except ValueError:  # refused by load_config; a Config made in code may have it
            target = None
        if target is not None and target.kind != "single":
            return f"{describe_target(target)}, prefix {self.prefix!r}"
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return f"redis {parts.path} (unix socket)"
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        try:
            place = f"{host}:{parts.port or 6379}"
        except ValueError:  # refused by load_config; a Config made in code may have it
            place = host
        database = parts.path.strip("/") or "0"
        return f"{parts.scheme} {place}/{database}, prefix {self.prefix!r}"


@dataclass(slots=True)
class MetricsConfig:
    #: Serve Prometheus metrics at ``/metrics`` (needs the ``metrics`` extra). Off by
    #: default: counts of users and channels are not for everyone who can reach the port.
    enabled: bool = False


#: Request headers that are the proxy's own to set, never a client's to pass on.
_NOT_PASSED = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "cookie",
        "upgrade",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "accept-encoding",
    }
)


#: The events webhooks can send (docs/operations.md, "Webhooks").
WEBHOOK_EVENTS = (
    "connect",
    "disconnect",
    "subscribe",
    "unsubscribe",
    "publish",
    "channel_occupied",
    "channel_vacated",
    "presence_join",
    "presence_leave",
    "alert",
)


@dataclass(slots=True)
class ProxyConfig:
    """The backend proxy (docs/operations.md, "Backend proxy"): each non-empty URL
    forwards its kind of client command to the application's backend."""

    #: Connects without a token: the backend says who the client is (or refuses).
    connect_url: str = ""
    #: A connection's expiry passed: the backend extends it or ends it.
    refresh_url: str = ""
    subscribe_url: str = ""
    #: The backend may refuse a client's publish or change its data.
    publish_url: str = ""
    #: RPC methods without a handler of their own.
    rpc_url: str = ""
    #: Headers of the client's HTTP request passed on to the backend (``Authorization``,
    #: ``Accept-Language``...); ``Cookie`` is passed through ``cookies`` only.
    headers: list[str] = field(default_factory=list)
    #: Cookies of the client's request passed on, by name (the backend's session cookie).
    cookies: list[str] = field(default_factory=list)
    #: Seconds a backend has to answer: past it the command gets error 116.
    timeout: float = 5.0
    #: Connections open to the backend at once; a request beyond waits for one.
    max_connections: int = 100
    #: Bytes of a backend's answer: past it, error 100.
    max_response_size: int = 2**20

    @property
    def enabled(self) -> bool:
        return any(self.urls().values())

    def urls(self) -> dict[str, str]:
        """Each kind's URL (empty: not proxied)."""
        return {
            "connect": self.connect_url,
            "refresh": self.refresh_url,
            "subscribe": self.subscribe_url,
            "publish": self.publish_url,
            "rpc": self.rpc_url,
        }

    def check(self, origins: list[str] | None = None) -> None:
        """InvalidArgument naming the first setting that cannot work (or, with the
        server's ``origins``, that would be unsafe)."""
        if self.cookies and origins is not None and (not origins or "*" in origins):
            # A browser sends its cookies with a page's requests to any site: without a
            # list of our own pages, any site's page could connect as its visitor.
            raise InvalidArgument(
                'proxy.cookies: set server.origins to your pages\' origins (not "*")'
            )
        for kind, url in self.urls().items():
            if url and not url.startswith(("http://", "https://")):
                raise InvalidArgument(f"proxy.{kind}_url: expected an http:// or https:// URL")
        for name in self.headers:
            if name.lower() in _NOT_PASSED:
                hint = " (use proxy.cookies)" if name.lower() == "cookie" else ""
                raise InvalidArgument(f"proxy.headers: {name!r} cannot be passed on{hint}")
        if not self.timeout > 0:
            raise InvalidArgument("proxy.timeout: must be more than 0 seconds")
        if self.max_connections < 1:
            raise InvalidArgument("proxy.max_connections: must be at least 1")
        if self.max_response_size < 1:
            raise InvalidArgument("proxy.max_response_size: must be at least 1")


@dataclass(slots=True)
class WebhooksConfig:
    #: Where events are POSTed (needs the ``webhooks`` extra). Empty: no webhooks.
    url: str = ""
    #: The HMAC-SHA256 key of each request's signature; required with ``url``.
    secret: str = ""
    #: Which events to send ("*": all of WEBHOOK_EVENTS), and for channel events, which
    #: namespaces ("*": all; "default" for names without one).
    events: list[str] = field(default_factory=lambda: ["*"])
    namespaces: list[str] = field(default_factory=lambda: ["*"])
    #: Seconds one request may take: a receiver that hangs must not hold a sender.
    timeout: float = 10.0
    #: Attempts per event, and the age (seconds) after which an event is not tried
    #: again: past either it goes to the dead-letter log.
    max_attempts: int = 10
    max_age: float = 600.0
    #: Backoff between attempts: full jitter, the bound doubling from ``retry_min`` up
    #: to ``retry_max`` seconds.
    retry_min: float = 0.5
    retry_max: float = 60.0
    #: Events waiting (queued, in flight or waiting for a retry): past it new events are
    #: dropped and counted, so a receiver that is down cannot grow the server's memory.
    queue_size: int = 10_000
    #: Requests in flight at once.
    concurrency: int = 4
    #: Seconds a stopping server keeps delivering what waits; what is left goes to the
    #: dead-letter log.
    flush_timeout: float = 5.0

    def check(self) -> None:
        """InvalidArgument, naming the setting, for a configuration that cannot work."""
        if not self.url:
            return
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument("webhooks.url must be an http:// or https:// URL with a host")
        if not self.secret:
            raise InvalidArgument("webhooks.secret is required when webhooks.url is set")
        unknown = [e for e in self.events if e != "*" and e not in WEBHOOK_EVENTS]
        if unknown:
            known = ", ".join(WEBHOOK_EVENTS)
            raise InvalidArgument(f"webhooks.events: unknown event {unknown[0]!r} (known: {known})")
        if not self.events:
            raise InvalidArgument("webhooks.events is empty: leave webhooks.url empty instead")
        if not self.namespaces:
            raise InvalidArgument('webhooks.namespaces is empty: use ["*"] for all')
        for name in ("timeout", "max_age", "retry_min", "retry_max", "flush_timeout"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"webhooks.{name} must be > 0")
        for name in ("max_attempts", "queue_size", "concurrency"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"webhooks.{name} must be >= 1")
        if self.retry_max < self.retry_min:
            raise InvalidArgument("webhooks.retry_max must be >= webhooks.retry_min")


#: The dashboard's namespace: its live channel is ``$admin:live`` (docs/operations.md,
#: "Dashboard"). It exists only while the dashboard is on.
ADMIN_NAMESPACE = "admin"


@dataclass(slots=True)
class AdminConfig:
    """The live dashboard at ``/admin`` (docs/operations.md, "Dashboard")."""

    #: The dashboard's password. Empty: no dashboard (``/admin`` is 404).
    password: str = ""
    #: Seconds a login lasts (its cookie and the tokens the page gets).
    session_ttl: float = 8 * 3600.0
    #: Logins at once; past it the oldest is ended (bounds the server's memory).
    max_sessions: int = 100
    #: Login attempts per second per client address, bursts of ``login_burst``: 429
    #: past it, so a password cannot be guessed at network speed.
    login_rate: float = 0.1
    login_burst: int = 5
    #: Seconds between two snapshots each node publishes while a dashboard watches.
    interval: float = 1.0
    #: Channels listed (those with the most subscribers on the node).
    top_channels: int = 10

    def check(self, channels: Mapping[str, ChannelOptions]) -> None:
        """InvalidArgument, naming the setting, for a configuration that cannot work."""
        if not self.password:
            return
        if len(self.password) < MIN_ADMIN_PASSWORD:
            raise InvalidArgument(f"admin.password: at least {MIN_ADMIN_PASSWORD} characters")
        if ADMIN_NAMESPACE in channels:
            raise InvalidArgument(
                f"[channels.{ADMIN_NAMESPACE}]: the namespace is the dashboard's own "
                "while admin.password is set"
            )
        for name in ("session_ttl", "interval", "login_rate"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"admin.{name} must be > 0")
        for name in ("max_sessions", "login_burst", "top_channels"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"admin.{name} must be >= 1")


#: Shortest dashboard password: the login is rate limited, but a short one is still
#: guessed by a patient attacker from many addresses.
MIN_ADMIN_PASSWORD = 12


@dataclass(slots=True)
class AlertsConfig:
    """Alert rules of one node (docs/operations.md, "Alerts"): each threshold at 0 (or
    false) is off, and with every rule off there are no alerts at all."""

    #: Seconds between evaluations of the rules.
    interval: float = 5.0
    #: Seconds over which the slow-consumer rate and the fan-out p99 are measured.
    window: float = 60.0
    #: Seconds a rule's condition must hold before it is raised (0: at once).
    hold: float = 0.0
    #: Client sessions on this node above this.
    connections_above: int = 0
    #: Slow consumers (a full outbox) per minute above this, over ``window``.
    slow_consumers_per_minute_above: float = 0.0
    #: The 99th percentile of fan-out latency, in milliseconds, over ``window``.
    fanout_p99_ms_above: float = 0.0
    #: The broker does not answer a ping within ``broker_timeout`` seconds.
    broker_unreachable: bool = False
    broker_timeout: float = 1.0
    #: Raise and resolve events kept for the dashboard (the oldest forgotten first).
    events_kept: int = 100

    @property
    def enabled(self) -> bool:
        return bool(
            self.connections_above
            or self.slow_consumers_per_minute_above
            or self.fanout_p99_ms_above
            or self.broker_unreachable
        )

    def check(self) -> None:
        """InvalidArgument, naming the setting, for a configuration that cannot work."""
        for name in ("interval", "window", "broker_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"alerts.{name} must be > 0")
        if self.hold < 0:
            raise InvalidArgument("alerts.hold must be >= 0")
        for name in (
            "connections_above",
            "slow_consumers_per_minute_above",
            "fanout_p99_ms_above",
        ):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"alerts.{name} must be >= 0 (0: off)")
        if self.events_kept < 1:
            raise InvalidArgument("alerts.events_kept must be >= 1")


@dataclass(slots=True)
class LogConfig:
    """What ``backchannel serve`` logs (docs/operations.md, "Logs")."""

    #: debug, info, warning or error.
    level: str = "info"
    #: text (for people) or json (one object per line, for log collectors).
    format: str = "text"
    #: The access log: one line per HTTP request and upgrade, per session connect and
    #: disconnect (with its code).
    access: bool = True

    def check(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise InvalidArgument("log.level: one of debug, info, warning, error")
        if self.format not in ("text", "json"):
            raise InvalidArgument("log.format: text or json")


@dataclass(slots=True)
class LongPollConfig:
    poll_timeout: float = 25.0
    idle_timeout: float = 60.0


@dataclass(slots=True)
class SseConfig:
    """Server-Sent Events at /sse (docs/protocol.md, "Server-Sent Events")."""

    enabled: bool = True
    #: Seconds between comments on a quiet stream (proxies cut silent responses).
    heartbeat: float = 15.0
    #: Seconds a session may wait for its stream to start (and its claim's life).
    idle_timeout: float = 60.0
    #: The browser's reconnect delay after a dropped stream, in milliseconds.
    retry: int = 2000


def _demo_namespaces() -> dict[str, ChannelOptions]:
    """The channels the demo chat uses: rooms with history and presence, and typing
    notices that are not kept."""
    return {
        "chat": ChannelOptions(
            history_size=100, history_ttl=3600.0, presence=True, join_leave=True
        ),
        "typing": ChannelOptions(),
        "orders": ChannelOptions(history_size=20, history_ttl=600.0, publish="server"),
    }


@dataclass(slots=True)
class Config:
    """The whole configuration of ``backchannel serve``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    longpoll: LongPollConfig = field(default_factory=LongPollConfig)
    sse: SseConfig = field(default_factory=SseConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    #: HubOptions' limits, by field name (``[hub]`` in the file).
    hub: dict[str, Any] = field(default_factory=dict)
    #: Channel namespaces (``[channels.NAME]``); ``[channels.default]`` is for names
    #: without a namespace. A file that has ``[channels]`` replaces the demo's.
    channels: dict[str, ChannelOptions] = field(default_factory=_demo_namespaces)

    def hub_options(self) -> HubOptions:
        namespaces = dict(self.channels)
        # No [channels.default]: names without a namespace are refused (102) when
        # namespaces are configured (HubOptions.channel).
        default = namespaces.pop("default", None)
        if self.admin.password:
            # The dashboard's live channel: only the server publishes in it, and
            # presence tells each node whether a dashboard watches.
            namespaces[ADMIN_NAMESPACE] = ChannelOptions(presence=True, publish="server")
        return HubOptions(
            namespaces=namespaces,
            default=default,
            anonymous=self.auth.anonymous,
            **self.hub,
        )


_SECTIONS = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "api": ApiConfig,
    "longpoll": LongPollConfig,
    "sse": SseConfig,
    "broker": BrokerConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
    "proxy": ProxyConfig,
    "webhooks": WebhooksConfig,
    "alerts": AlertsConfig,
    "admin": AdminConfig,
}
_HUB_FIELDS = {
    f.name: f.type
    for f in dataclasses.fields(HubOptions)
    if f.name not in ("namespaces", "default", "anonymous")
}
_CHANNEL_FIELDS = {f.name for f in dataclasses.fields(ChannelOptions)}


#: ``BACKCHANNEL_*`` variables that are not settings and must not be refused: the pure
#: Python switch read at import (docs/design.md, "The accelerator"), the wire format's
#: JSON codec (hub/wire.py, also read at import) and the folder of the test suite's
#: screenshots, which a server started by the tests inherits.
ENVIRON_ALLOWED = frozenset(
    {"BACKCHANNEL_NO_EXTENSIONS", "BACKCHANNEL_JSON", "BACKCHANNEL_TEST_ARTIFACTS"}
)

#: Shortest ``auth.secret``, in bytes: an HS256 key must be at least as long as the hash
#: output, 256 bits (RFC 7518, section 3.2). Not a setting: it only ever protects.
MIN_SECRET_BYTES = 32
#: Shortest ``api.key``, in characters: 16 random ones are beyond guessing at any rate
#: the API allows. Not a setting either.
MIN_API_KEY_LENGTH = 16

#: Where a setting may lie, beyond its type: (lowest, highest). Other numbers of the
#: sections must be above zero (a rate, burst, size or timeout of zero or less stops
#: everything, or nothing), and those of [hub] zero or more; sections with a ``check``
#: of their own say what theirs may be.
_RANGES: dict[str, tuple[int, int]] = {"server.port": (0, 65535)}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration from a TOML file (or the defaults), then the environment.

    Raises :class:`InvalidArgument`, with a one-line message that names the setting or
    the variable, for anything it cannot use."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read config {path}: {exc}") from exc
        _apply_file(config, data, str(path))
    _apply_environ(config, environ if environ is not None else {})
    # Built here so that a bad [hub] or [channels] value is reported at start.
    config.hub_options()
    config.proxy.check(config.server.origins)
    config.webhooks.check()
    config.alerts.check()
    config.log.check()
    config.admin.check(config.channels)
    return config


def _apply_file(config: Config, data: dict[str, Any], where: str) -> None:
    for section, values in data.items():
        if not isinstance(values, dict):
            raise InvalidArgument(f"{where}: {section} must be a table")
        if section in _SECTIONS:
            target = getattr(config, section)
            for key, value in values.items():
                _set(target, section, key, value, f"{where}: [{section}] {key}")
        elif section == "hub":
            for key, value in values.items():
                if key not in _HUB_FIELDS:
                    raise InvalidArgument(f"{where}: [hub] has no setting {key!r}")
                _set_hub(config, key, value, f"{where}: [hub] {key}")
        elif section == "channels":
            config.channels = {}
            for name, options in values.items():
                if not isinstance(options, dict):
                    raise InvalidArgument(f"{where}: [channels.{name}] must be a table")
                unknown = set(options) - _CHANNEL_FIELDS
                if unknown:
                    raise InvalidArgument(
                        f"{where}: [channels.{name}] has no setting {sorted(unknown)[0]!r}"
                    )
                try:
                    config.channels[name] = ChannelOptions(**options)
                except (TypeError, InvalidArgument) as exc:
                    raise InvalidArgument(f"{where}: [channels.{name}]: {exc}") from exc
        else:
            raise InvalidArgument(f"{where}: unknown section [{section}]")


def _apply_environ(config: Config, environ: Mapping[str, str]) -> None:
    known: set[str] = set()
    for section in _SECTIONS:
        target = getattr(config, section)
        for f in dataclasses.fields(target):
            name = f"BACKCHANNEL_{section}_{f.name}".upper()
            known.add(name)
            if name in environ:
                value = _parse(environ[name], getattr(target, f.name), name)
                _set(target, section, f.name, value, name)
    for key in _HUB_FIELDS:
        name = f"BACKCHANNEL_HUB_{key}".upper()
        known.add(name)
        if name in environ:
            _set_hub(config, key, _parse(environ[name], getattr(HubOptions(), key), name), name)
    # A misspelt variable would leave its setting at the default without a word
    # (BACKCHANNEL_SERVER_PROT=9000 serving on 8000): refuse it, as the file does.
    codec = environ.get("BACKCHANNEL_JSON")
    if codec is not None and codec not in ("orjson", "stdlib"):
        raise InvalidArgument(f"BACKCHANNEL_JSON: {codec!r} is not orjson or stdlib")
    if codec == "orjson" and wire.codec() != "orjson":
        raise InvalidArgument("BACKCHANNEL_JSON: orjson is not installed (backchannel[speed])")
    for name in sorted(environ):
        if name.startswith("BACKCHANNEL_") and name not in known | ENVIRON_ALLOWED:
            # Compared without the prefix that every name shares.
            suffixes = {known_name[12:]: known_name for known_name in known}
            close = difflib.get_close_matches(name[12:], sorted(suffixes), n=1, cutoff=0.75)
            hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
            raise InvalidArgument(
                f"{name}: no such setting{hint}; rename or unset it "
                "(docs/config.md lists the variables)"
            )


def _parse(text: str, like: Any, where: str) -> Any:
    """An environment variable's text as the type of the setting's default."""
    try:
        if isinstance(like, bool):
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, list):
            return [item.strip() for item in text.split(",") if item.strip()]
        return text
    except ValueError as exc:
        raise InvalidArgument(f"{where}: cannot read {text!r} as {type(like).__name__}") from exc


def _typed(like: Any, value: Any, where: str) -> Any:
    """``value`` if it has the type of ``like`` (an int for a float becomes a float)."""
    if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    valid = isinstance(value, type(like)) and (
        isinstance(like, bool) or not isinstance(value, bool)
    )
    if isinstance(like, list):
        valid = isinstance(value, list) and all(isinstance(item, str) for item in value)
    if not valid:
        raise InvalidArgument(f"{where}: expected {type(like).__name__}, got {value!r}")
    return value


def _set(target: Any, section: str, key: str, value: Any, where: str) -> None:
    if key not in {f.name for f in dataclasses.fields(target)}:
        raise InvalidArgument(f"{where}: no such setting")
    value = _typed(getattr(target, key), value, where)
    # A section with a check of its own (alerts, where 0 turns a rule off; webhooks;
    # the proxy; the dashboard) says itself what its numbers may be, after loading.
    if not hasattr(target, "check"):
        _check(f"{section}.{key}", value, where)
    setattr(target, key, value)


def _set_hub(config: Config, key: str, value: Any, where: str) -> None:
    value = _typed(getattr(HubOptions(), key), value, where)
    if isinstance(value, int | float) and value < 0:
        raise InvalidArgument(f"{where}: must be 0 or more, got {value!r}")
    config.hub[key] = value


def _check(setting: str, value: Any, where: str) -> None:
    """Refuse a value of the right type that the server cannot use."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        if setting in _RANGES:
            low, high = _RANGES[setting]
            if not low <= value <= high:
                raise InvalidArgument(f"{where}: must be {low} to {high}, got {value!r}")
        elif not value > 0:
            raise InvalidArgument(f"{where}: must be more than 0, got {value!r}")
    elif setting == "auth.secret" and value and len(value.encode()) < MIN_SECRET_BYTES:
        raise InvalidArgument(
            f"{where}: too short ({len(value.encode())} bytes); HS256 needs at least "
            f"{MIN_SECRET_BYTES} random bytes, e.g. from: openssl rand -base64 32"
        )
    elif setting == "api.key" and value and len(value) < MIN_API_KEY_LENGTH:
        raise InvalidArgument(
            f"{where}: too short ({len(value)} characters); use at least "
            f"{MIN_API_KEY_LENGTH} random ones, e.g. from: openssl rand -hex 16"
        )
    elif setting == "broker.prefix" and ("{" in value or "}" in value):
        # A hash tag in the prefix would put every key in one Redis Cluster slot.
        raise InvalidArgument(f"{where}: must not contain '{{' or '}}'")
    elif setting == "broker.url" and value:
        try:
            parse_redis_url(value)
        except ValueError as exc:
            # Not the value itself: a Redis URL may carry a password.
            raise InvalidArgument(
                f"{where}: {exc}; write redis://HOST:6379/0 (or rediss:// for TLS, "
                "unix:///path/to/redis.sock, redis+cluster://HOST:PORT,HOST:PORT/, "
                "redis+sentinel://HOST:PORT,HOST:PORT/MASTER)"
            ) from None
