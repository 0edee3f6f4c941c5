"""``backchannel token``, as a process."""

from __future__ import annotations

import os
import subprocess
import time

from helpers.cli import CLI

from backchannel.hub import TokenVerifier


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
