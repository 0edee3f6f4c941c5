"""Argument types: out-of-range values are usage errors naming the flag."""

from __future__ import annotations

import pytest
from helpers.cli import run_cli, usage_error


@pytest.mark.parametrize(
    ("command", "flag"), [("serve", "--port"), ("echo", "--port"), ("serve", "--workers")]
)
def test_out_of_range_flags_are_usage_errors(command: str, flag: str) -> None:
    for value in ("70000", "-1", "x") if flag == "--port" else ("0", "-3"):
        assert f"argument {flag}: '{value}' is not" in usage_error(run_cli(command, flag, value))


def test_a_request_timeout_is_above_zero() -> None:
    for value in ("0", "-1", "x"):
        line = usage_error(run_cli("publish", "chat:x", "1", "--timeout", value))
        assert f"argument --timeout: '{value}' is not" in line
