"""``backchannel publish``, ``broadcast``, ``presence`` and ``history``, as processes
against a real ``backchannel serve``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers.cli import API_KEY, SECRET, clean_env, one_line_error, run_cli
from helpers.hub_client import HubClient

from backchannel.hub.token import make_token


def api(*args: str, **env: str) -> tuple[int, object, str]:
    result = run_cli(*args, env=clean_env(**env))
    answer = json.loads(result.stdout) if result.returncode == 0 else None
    return result.returncode, answer, result.stderr


async def test_publish_reaches_a_subscriber_and_history_lists_it(hub: str) -> None:
    port = int(hub.rpartition(":")[2])
    client = await HubClient.open(port, path="/ws", token=make_token(SECRET, "ann"))
    await client.call("subscribe", channel="chat:cli")
    status, answer, stderr = api(
        "publish", "chat:cli", '{"text": "from the shell"}', "--url", hub, "--api-key", API_KEY
    )
    assert status == 0, stderr
    assert isinstance(answer, dict) and answer["offset"] >= 1
    [publication] = await client.publications(1)
    assert publication["data"] == {"text": "from the shell"}
    await client.close()
    # The key from the environment this time.
    status, answer, _ = api("history", "chat:cli", "--url", hub, BACKCHANNEL_API_KEY=API_KEY)
    assert status == 0
    assert isinstance(answer, dict)
    assert [p["data"] for p in answer["publications"]] == [{"text": "from the shell"}]


async def test_broadcast_and_presence(hub: str) -> None:
    port = int(hub.rpartition(":")[2])
    client = await HubClient.open(port, path="/ws", token=make_token(SECRET, "bea"))
    await client.call("subscribe", channel="chat:one")
    await client.call("subscribe", channel="chat:two")
    status, answer, stderr = api(
        "broadcast", '"both"', "chat:one", "chat:two", "--url", hub, "--api-key", API_KEY
    )
    assert status == 0, stderr
    assert isinstance(answer, dict) and len(answer["results"]) == 2
    publications = await client.publications(2)
    assert sorted(p["channel"] for p in publications) == ["chat:one", "chat:two"]
    status, answer, _ = api("presence", "chat:one", "--url", hub, "--api-key", API_KEY)
    assert isinstance(answer, dict)
    assert [info["user"] for info in answer["clients"].values()] == ["bea"]
    other = await HubClient.open(port, path="/ws", token=make_token(SECRET, "bo"))
    await other.call("subscribe", channel="chat:one")
    ids = sorted(c.info["client"] for c in (client, other))
    flags = ("--url", hub, "--api-key", API_KEY)
    status, answer, _ = api("presence", "chat:one", "--limit", "1", *flags)
    assert isinstance(answer, dict) and list(answer["clients"]) == [ids[0]]
    assert answer["next_cursor"] == ids[0]
    status, answer, _ = api("presence", "chat:one", "--cursor", ids[0], *flags)
    assert isinstance(answer, dict) and list(answer["clients"]) == [ids[1]]
    status, answer, _ = api("presence", "chat:one", "--count", *flags)
    assert answer == {"count": 2, "users": 2}
    await other.close()
    await client.close()


def test_a_refusal_is_one_line_with_status_1(hub: str) -> None:
    result = run_cli("publish", "nowhere:x", "1", "--url", hub, "--api-key", API_KEY)
    assert result.returncode == 1
    assert one_line_error(result).startswith("error: publish refused: 400 ")
    result = run_cli("presence", "chat:x", "--url", hub, "--api-key", "wrong-key-0123456789")
    assert result.returncode == 1
    assert one_line_error(result).startswith("error: presence refused: 401 ")


def test_mistakes_in_the_command_are_status_2(hub: str) -> None:
    result = run_cli("publish", "chat:x", "{not json", "--url", hub, "--api-key", API_KEY)
    assert result.returncode == 2
    assert "is not JSON" in one_line_error(result)
    result = run_cli("publish", "chat:x", "1", "--url", hub)
    assert result.returncode == 2
    assert "BACKCHANNEL_API_KEY" in one_line_error(result)


def test_an_unreachable_server_is_one_line(hub: str) -> None:
    result = run_cli("publish", "chat:x", "1", "--url", "http://127.0.0.1:1", "--api-key", "k")
    assert result.returncode == 1
    assert one_line_error(result).startswith("error: cannot reach http://127.0.0.1:1/api/")


def test_without_the_cli_extra_it_says_which_to_install(tmp_path: Path) -> None:
    """httpx made unimportable (as when the cli extra is not installed): one line naming
    the extra, for the API subcommands and bench; the rest of the CLI still runs."""
    blocker = tmp_path / "blocked" / "httpx"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError(\"No module named 'httpx'\", name='httpx')\n"
    )
    path = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])
    env = clean_env(PYTHONPATH=path, BACKCHANNEL_API_KEY=API_KEY, BACKCHANNEL_AUTH_SECRET=SECRET)
    for args in (["publish", "chat:x", "1"], ["bench"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 2
        line = one_line_error(result)
        assert line == f"error: backchannel {args[0]} needs httpx: pip install -e '.[cli]'"
    assert run_cli("genconfig", env=env).returncode == 0
