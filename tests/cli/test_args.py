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
