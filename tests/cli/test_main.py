"""The parser of ``backchannel``: help in plain text, and a version."""

from __future__ import annotations

from helpers.cli import run_cli

from backchannel import __version__


def test_help_is_plain_text_and_there_is_a_version() -> None:
    for args in (["--help"], ["serve", "--help"], ["connect", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "``" not in result.stdout, result.stdout
    assert "--demo" in run_cli("serve", "--help").stdout
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"backchannel {__version__}\n"


SUBCOMMANDS = [
    "serve",
    "token",
    "echo",
    "connect",
    "publish",
    "broadcast",
    "presence",
    "history",
    "bench",
    "genconfig",
    "checkconfig",
    "checktoken",
]


def test_every_subcommand_explains_itself_without_markup() -> None:
    """The list names each subcommand, and each one's --help has a line of its own
    (usage and options), with no reST markup (``code``, :role:, .. directive)."""
    listing = run_cli("--help").stdout
    for name in SUBCOMMANDS:
        assert name in listing, name
        result = run_cli(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        text = result.stdout
        assert text.startswith(f"usage: backchannel {name}"), text
        assert "``" not in text and ":class:" not in text and "\n.. " not in text, text
        assert len(text.splitlines()) > 5, text
    assert "--log-format {text,json}" in run_cli("serve", "--help").stdout
