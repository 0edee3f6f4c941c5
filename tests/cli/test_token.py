"""``backchannel token``, as a process."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from helpers.cli import CLI, clean_env, one_line_error, run_cli

from backchannel.hub import TokenVerifier
from backchannel.hub.token import make_token


def test_token_prints_a_token_signed_with_the_configured_secret() -> None:
    secret = "t" * 32
    result = subprocess.run(
        [*CLI, "token", "--sub", "bob", "--ttl", "120", "--info", '{"name": "Bob"}'],
        capture_output=True,
        text=True,
        env={**os.environ, "BACKCHANNEL_AUTH_SECRET": secret},
        check=True,
    )
    claims = TokenVerifier(secret=secret).verify(result.stdout.strip())
    assert claims.user == "bob" and claims.info == {"name": "Bob"}
    assert claims.expires is not None and 100 < claims.expires - time.time() <= 120


def test_token_without_a_secret_says_where_to_set_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BACKCHANNEL_AUTH_SECRET"}
    result = subprocess.run(
        [*CLI, "token", "--sub", "bob"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "BACKCHANNEL_AUTH_SECRET" in result.stderr


def test_checktoken_prints_the_claims_of_a_valid_token() -> None:
    secret = "c" * 32
    env = clean_env(BACKCHANNEL_AUTH_SECRET=secret)
    token = make_token(secret, "ann", ttl=60, info={"name": "Ann"})
    result = run_cli("checktoken", token, env=env)
    assert result.returncode == 0, result.stderr
    claims = json.loads(result.stdout)
    assert claims["valid"] == "connection" and claims["user"] == "ann"
    assert claims["info"] == {"name": "Ann"}
    channel = make_token(secret, "ann", channel="$secret:room")
    result = run_cli("checktoken", channel, env=env)
    assert json.loads(result.stdout)["channel"] == "$secret:room"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (make_token("o" * 32, "ann"), "error: token refused: invalid token (Signature"),
        (make_token("c" * 32, "ann", ttl=-10), "error: token refused: token expired"),
        ("not-a-jwt", "error: token refused: malformed token"),
    ],
)
def test_checktoken_says_why_a_token_is_refused(token: str, why: str) -> None:
    result = run_cli("checktoken", token, env=clean_env(BACKCHANNEL_AUTH_SECRET="c" * 32))
    assert result.returncode == 1
    assert one_line_error(result).startswith(why)


def test_checktoken_without_a_key_is_a_config_error() -> None:
    result = run_cli("checktoken", "x")
    assert result.returncode == 2
    assert "BACKCHANNEL_AUTH_SECRET" in one_line_error(result)
