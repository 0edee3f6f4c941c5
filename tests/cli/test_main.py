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
