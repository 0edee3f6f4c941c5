"""The configuration of a command: a mistake is one line naming the setting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers.cli import CLI, clean_env, one_line_error, serve_process


def test_serve_refuses_a_config_with_a_mistake(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 8000\n")
    with serve_process("--config", str(config)) as process:
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "[server] prot: no such setting" in stderr


@pytest.mark.parametrize(
    ("file", "environ", "message"),
    [
        ("[server]\nport = 70000\n", {}, "[server] port: must be 0 to 65535, got 70000"),
        ("", {"BACKCHANNEL_SERVER_PORT": "65536"}, "BACKCHANNEL_SERVER_PORT: must be 0 to 65535"),
        ("", {"BACKCHANNEL_BROKER_URL": "127.0.0.1:6379"}, "BACKCHANNEL_BROKER_URL: not a Redis"),
        ('[broker]\nurl = "localhost"\n', {}, "[broker] url: not a Redis URL"),
        ("", {"BACKCHANNEL_SERVER_PROT": "9000"}, "did you mean BACKCHANNEL_SERVER_PORT?"),
        ("", {"BACKCHANNEL_AUTH_SECRET": "short"}, "BACKCHANNEL_AUTH_SECRET: too short"),
        ('[api]\nkey = "k"\n', {}, "[api] key: too short"),
        ('[auth]\npublic_key_file = "absent.pem"\n', {}, "auth.public_key_file absent.pem"),
        ('[auth]\npublic_key_file = "prod.toml"\n', {}, "no PEM public key in it"),
        ('[server]\nhost = "nowhere.invalid"\n', {}, "server.host nowhere.invalid: cannot"),
    ],
)
def test_config_mistakes_are_one_line_naming_the_setting(
    tmp_path: Path, file: str, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "prod.toml").write_text(file)
    result = subprocess.run(
        [*CLI, "serve", "--port", "0", "--config", "prod.toml"],
        capture_output=True,
        text=True,
        env=clean_env(**environ),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert message in one_line_error(result)
