"""``serve --demo`` keeps its made-up secret and API key in a state file: a restart
strands no open page (its token still works) and no API key in use."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

from helpers.cli import banner_of, clean_env, serving
from helpers.http import Http
from helpers.hub_client import HubClient

from backchannel.cli.demo import state_file


async def demo_token(port: int, user: str) -> str:
    http = await Http.open(port)
    try:
        reply = await http.exchange("POST", "/demo/token", json.dumps({"user": user}))
    finally:
        await http.close()
    assert reply.status == 200, reply.text
    return str(json.loads(reply.text)["token"])


async def test_a_restarted_demo_keeps_its_secret_and_api_key(tmp_path: Path) -> None:
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"))
    path = tmp_path / "state" / "backchannel" / "demo.toml"
    with serving("--demo", env=env) as process:
        port, lines = banner_of(process, 5)
        token = await demo_token(port, "ann")
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert lines[3] == f"demo secret and API key kept in {path} (delete it for new ones)"
    key = lines[4].removeprefix("HTTP API key (kept for the demo): ")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with serving("--demo", env=env) as process:
        port, again = banner_of(process, 5)
        # The page's token, from before the restart, still connects.
        client = await HubClient.open(port, path="/ws", token=token)
        assert client.info["user"] == "ann"
        await client.close()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert again[4] == f"HTTP API key (kept for the demo): {key}"


def test_without_the_demo_nothing_is_kept(tmp_path: Path) -> None:
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"))
    with serving(env=env) as process:
        _, lines = banner_of(process, 3)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert lines[2].startswith("HTTP API key (made for this run; set api.key): ")
    assert not (tmp_path / "state").exists()


def test_the_state_file_follows_xdg_state_home(tmp_path: Path) -> None:
    assert state_file({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "backchannel/demo.toml"
    # A relative XDG_STATE_HOME is invalid (the XDG spec): the default is used.
    default = Path.home() / ".local/state/backchannel/demo.toml"
    assert state_file({"XDG_STATE_HOME": "relative"}) == default
    assert state_file({}) == default
