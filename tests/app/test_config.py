"""The server's configuration: TOML file, environment overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from backchannel.app.config import (
    ENVIRON_ALLOWED,
    MIN_API_KEY_LENGTH,
    MIN_SECRET_BYTES,
    BrokerConfig,
    load_config,
)
from backchannel.exceptions import InvalidArgument
from backchannel.hub import ChannelOptions


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backchannel.toml"
    path.write_text(text)
    return path


def test_defaults_serve_on_loopback_without_the_demo() -> None:
    config = load_config(None, {})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    # The demo hands out tokens for any name: only when asked for (serve --demo).
    assert not config.server.demo and config.server.websocket
    options = config.hub_options()
    chat = options.channel("chat:lobby")
    assert chat is not None and chat.presence and chat.history_size == 100
    assert options.channel("nope:x") is None


def test_a_file_sets_sections_hub_limits_and_channels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 9001
origins = ["https://shop.example"]
demo = false

[auth]
secret = "a secret of at least thirty-two bytes"
anonymous = true

[api]
key = "an-api-key-of-16+"

[longpoll]
poll_timeout = 10

[hub]
max_channels = 8

[channels.orders]
history_size = 50
publish = "server"

[channels.default]
presence = true
""",
    )
    config = load_config(path, {})
    assert config.server.port == 9001 and config.server.origins == ["https://shop.example"]
    assert config.longpoll.poll_timeout == 10.0 and isinstance(config.longpoll.poll_timeout, float)
    options = config.hub_options()
    assert options.anonymous and options.max_channels == 8
    assert options.channel("orders:42") == ChannelOptions(history_size=50, publish="server")
    assert options.channel("plain") == ChannelOptions(presence=True)
    # A file with [channels] replaces the demo's namespaces.
    assert options.channel("chat:lobby") is None


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n[api]\nkey = 'from-file-0123456789'\n")
    environ = {
        "BACKCHANNEL_SERVER_PORT": "9002",
        "BACKCHANNEL_API_KEY": "from-env-0123456789",
        "BACKCHANNEL_SERVER_WEBSOCKET": "false",
        "BACKCHANNEL_SERVER_ORIGINS": "https://a.example, https://b.example",
        "BACKCHANNEL_HUB_MAX_CHANNELS": "4",
        "BACKCHANNEL_LONGPOLL_IDLE_TIMEOUT": "5.5",
        "BACKCHANNEL_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    config = load_config(path, environ)
    assert config.server.port == 9002 and config.api.key == "from-env-0123456789"
    assert config.server.websocket is False
    assert config.server.origins == ["https://a.example", "https://b.example"]
    assert config.longpoll.idle_timeout == 5.5
    assert config.broker.url == "redis://127.0.0.1:6379/0"
    assert config.broker.prefix == "backchannel"
    assert config.hub_options().max_channels == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", "no such setting"),
        ("[sever]\nport = 1\n", "unknown section [sever]"),
        ("[server]\nport = '80'\n", "expected int"),
        ("[server]\nport = true\n", "expected int"),
        ("[server]\norigins = 'x'\n", "expected list"),
        ("[hub]\nmax_chanels = 3\n", "[hub] has no setting 'max_chanels'"),
        ("[channels.chat]\nhistory = 3\n", "[channels.chat] has no setting 'history'"),
        ("[channels.chat]\npublish = 'anyone'\n", "publish is 'clients' or 'server'"),
        ("[server\n", "cannot read config"),
        ("[proxy]\nrpc_url = 'backend:80/rpc'\n", "proxy.rpc_url: expected an http:// or https://"),
        ("[proxy]\nheaders = ['Cookie']\n", "proxy.headers: 'Cookie' cannot be passed on"),
        ("[proxy]\ntimeout = 0\n", "proxy.timeout: must be more than 0 seconds"),
        ("[proxy]\ncookies = ['sid']\n", "proxy.cookies: set server.origins"),
        ("[server]\nport = 65536\n", "[server] port: must be 0 to 65535, got 65536"),
        ("[server]\nport = -1\n", "[server] port: must be 0 to 65535"),
        ("[server]\nopen_rate = 0\n", "[server] open_rate: must be more than 0"),
        ("[api]\nburst = -4\n", "[api] burst: must be more than 0"),
        ("[longpoll]\npoll_timeout = 0\n", "[longpoll] poll_timeout: must be more than 0"),
        ("[server]\nmax_body_size = -5\n", "[server] max_body_size: must be more than 0"),
        ("[hub]\nmax_channels = 'x'\n", "[hub] max_channels: expected int"),
        ("[hub]\npresence_ttl = -1\n", "[hub] presence_ttl: must be 0 or more"),
        ("[broker]\nurl = '127.0.0.1:6379'\n", "[broker] url: not a Redis URL"),
        ("[broker]\nurl = 'redis://h:port/0'\n", "[broker] url: not a Redis URL"),
        ("[broker]\nprefix = 'a{b}'\n", "[broker] prefix: must not contain '{' or '}'"),
        ("[broker]\nurl = 'redis+cluster://h1:7000,h2/'\n", "[broker] url: not a Redis URL"),
        ("[broker]\nurl = 'redis+sentinel://s1:26379/'\n", "URL needs the master's name"),
        ("[auth]\nsecret = 'short'\n", "[auth] secret: too short"),
        ("[api]\nkey = 'fifteen-chars-k'\n", "[api] key: too short"),
    ],
)
def test_mistakes_in_the_file_are_errors_that_name_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(write(tmp_path, text), {})


def test_the_proxy_section_from_the_file_and_the_environment(tmp_path: Path) -> None:
    text = '[proxy]\nconnect_url = "http://app/c"\ncookies = ["sid"]\ntimeout = 2\n'
    text += '[server]\norigins = ["https://app.example"]\n'
    path = write(tmp_path, text)
    config = load_config(path, {"BACKCHANNEL_PROXY_HEADERS": "Authorization, X-Tenant"})
    proxy = config.proxy
    assert (proxy.connect_url, proxy.cookies, proxy.timeout) == ("http://app/c", ["sid"], 2.0)
    assert proxy.headers == ["Authorization", "X-Tenant"]
    assert proxy.enabled and not load_config(None, {}).proxy.enabled


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(InvalidArgument, match="BACKCHANNEL_SERVER_PORT"):
        load_config(None, {"BACKCHANNEL_SERVER_PORT": "eighty"})
    with pytest.raises(InvalidArgument, match="BACKCHANNEL_SERVER_DEMO"):
        load_config(None, {"BACKCHANNEL_SERVER_DEMO": "maybe"})


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read config"):
        load_config(tmp_path / "absent.toml", {})


def test_webhooks_need_a_secret_and_known_events() -> None:
    with pytest.raises(InvalidArgument, match=r"^webhooks.url must be an http"):
        load_config(None, {"BACKCHANNEL_WEBHOOKS_URL": "backend.example/hooks"})
    with pytest.raises(InvalidArgument, match=r"^webhooks.secret is required"):
        load_config(None, {"BACKCHANNEL_WEBHOOKS_URL": "https://backend.example/hooks"})
    with pytest.raises(InvalidArgument, match=r"^webhooks.events: unknown event 'joined'"):
        load_config(
            None,
            {
                "BACKCHANNEL_WEBHOOKS_URL": "https://backend.example/hooks",
                "BACKCHANNEL_WEBHOOKS_SECRET": "s",
                "BACKCHANNEL_WEBHOOKS_EVENTS": "publish,joined",
            },
        )
    config = load_config(
        None,
        {
            "BACKCHANNEL_WEBHOOKS_URL": "https://backend.example/hooks",
            "BACKCHANNEL_WEBHOOKS_SECRET": "s",
            "BACKCHANNEL_WEBHOOKS_EVENTS": "publish, presence_join",
        },
    )
    assert config.webhooks.events == ["publish", "presence_join"]
    assert load_config(None, {}).webhooks.url == ""  # off unless configured


def test_a_short_password_or_a_taken_namespace_stops_the_server_with_one_line(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidArgument, match=r"^admin\.password: at least 12 characters$"):
        load_config(None, {"BACKCHANNEL_ADMIN_PASSWORD": "short"})
    file = tmp_path / "backchannel.toml"
    file.write_text('[admin]\npassword = "long enough password"\n[channels.admin]\n')
    with pytest.raises(InvalidArgument, match=r"^\[channels\.admin\]: the namespace is the"):
        load_config(file, {})
    config = load_config(None, {"BACKCHANNEL_ADMIN_PASSWORD": "a long admin password"})
    assert config.admin.password == "a long admin password"
    # The dashboard's namespace exists only while it is on.
    assert config.hub_options().namespaces["admin"].publish == "server"
    assert "admin" not in load_config(None, {}).hub_options().namespaces


def test_a_variable_that_is_no_setting_is_refused_with_a_suggestion() -> None:
    with pytest.raises(InvalidArgument) as caught:
        load_config(None, {"BACKCHANNEL_SERVER_PROT": "9000"})
    assert str(caught.value) == (
        "BACKCHANNEL_SERVER_PROT: no such setting (did you mean BACKCHANNEL_SERVER_PORT?); "
        "rename or unset it (docs/config.md lists the variables)"
    )
    with pytest.raises(InvalidArgument, match=r"^BACKCHANNEL_WHATEVER: no such setting; "):
        load_config(None, {"BACKCHANNEL_WHATEVER": "1"})


def test_variables_that_are_not_settings_but_are_read_elsewhere_pass() -> None:
    environ = {"BACKCHANNEL_NO_EXTENSIONS": "1", "BACKCHANNEL_TEST_ARTIFACTS": "/tmp/a"}
    assert set(environ) <= ENVIRON_ALLOWED
    assert load_config(None, {**environ, "OTHER_PROGRAM_SETTING": "x"}) == load_config(None, {})


def test_the_json_codec_variable_is_checked_in_one_line() -> None:
    assert load_config(None, {"BACKCHANNEL_JSON": "stdlib"}) == load_config(None, {})
    assert load_config(None, {"BACKCHANNEL_JSON": "orjson"}) == load_config(None, {})
    with pytest.raises(
        InvalidArgument, match=r"^BACKCHANNEL_JSON: 'ujson' is not orjson or stdlib$"
    ):
        load_config(None, {"BACKCHANNEL_JSON": "ujson"})


def test_short_secrets_are_refused_by_the_variable_name() -> None:
    with pytest.raises(InvalidArgument, match=r"^BACKCHANNEL_AUTH_SECRET: too short \(31 bytes\)"):
        load_config(None, {"BACKCHANNEL_AUTH_SECRET": "s" * 31})
    with pytest.raises(InvalidArgument, match=r"^BACKCHANNEL_API_KEY: too short"):
        load_config(None, {"BACKCHANNEL_API_KEY": "k" * 15})
    # The documented minimums themselves pass; empty means "made up for this run".
    config = load_config(
        None, {"BACKCHANNEL_AUTH_SECRET": "é" * 16, "BACKCHANNEL_API_KEY": "k" * 16}
    )
    assert len(config.auth.secret.encode()) == MIN_SECRET_BYTES
    assert len(config.api.key) == MIN_API_KEY_LENGTH
    assert load_config(None, {"BACKCHANNEL_API_KEY": ""}).api.key == ""


def test_a_bad_broker_url_is_refused_without_showing_it() -> None:
    url = "hunter2@redis.example:6379"
    with pytest.raises(InvalidArgument) as caught:
        load_config(None, {"BACKCHANNEL_BROKER_URL": url})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("", "memory (this process only)"),
        ("redis://:hunter2@10.0.0.5:6380/2", "redis 10.0.0.5:6380/2, prefix 'backchannel'"),
        ("rediss://user:hunter2@[::1]", "rediss [::1]:6379/0, prefix 'backchannel'"),
        ("unix:///run/redis.sock", "redis /run/redis.sock (unix socket)"),
        (
            "redis+cluster://:hunter2@10.0.0.5:7000,10.0.0.6:7000/",
            "redis cluster via 10.0.0.5:7000,10.0.0.6:7000, prefix 'backchannel'",
        ),
        (
            "redis+sentinel://:hunter2@s1:26379/mymaster",
            "redis sentinel s1:26379, master 'mymaster', db 0, prefix 'backchannel'",
        ),
    ],
)
def test_the_broker_is_described_without_its_password(url: str, shown: str) -> None:
    assert BrokerConfig(url=url).describe() == shown
