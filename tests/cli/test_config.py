"""The configuration of a command: a mistake is one line naming the setting."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from helpers.cli import CLI, clean_env, one_line_error, run_cli, serve_process


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


def test_genconfig_makes_a_file_checkconfig_accepts_with_fresh_secrets(tmp_path: Path) -> None:
    made = [run_cli("genconfig") for _ in range(2)]
    assert all(result.returncode == 0 for result in made)
    first, second = (tomllib.loads(result.stdout) for result in made)
    assert len(first["auth"]["secret"]) >= 43  # 32 random bytes, base64url
    assert len(first["api"]["key"]) >= 16
    assert first["auth"]["secret"] != second["auth"]["secret"]
    assert first["api"]["key"] != second["api"]["key"]
    path = tmp_path / "backchannel.toml"
    path.write_text(made[0].stdout)
    result = run_cli("checkconfig", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK")


def documented_settings() -> dict[str, set[str]]:
    """The settings of docs/config.md's "The file" block, by section."""
    text = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    block = text.split("## The file", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    settings: dict[str, set[str]] = {}
    section = ""
    for line in block.splitlines():
        if line.startswith("["):
            section = line.split("]", 1)[0].strip("[").split(".")[0]
        elif "=" in line and not line.startswith((" ", "#")):
            settings.setdefault(section, set()).add(line.split("=", 1)[0].strip())
    return settings


def test_genconfig_settings_are_the_documented_ones() -> None:
    """Each setting genconfig writes, or shows commented out, is in docs/config.md."""
    text = run_cli("genconfig").stdout
    documented = documented_settings()
    section = ""
    seen = 0
    for line in text.splitlines():
        line = line.removeprefix("# ")
        if line.startswith("["):
            section = line.split("]", 1)[0].strip("[").split(".")[0]
        elif section and "=" in line and line[:1].isalpha():
            name = line.split("=", 1)[0].strip()
            assert name in documented[section], f"[{section}] {name}"
            seen += 1
    assert seen >= 10


def test_checkconfig_prints_the_one_line_serve_would_fail_with(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[auth]\nsecret = "short"\n')
    result = run_cli("checkconfig", str(tmp_path / "bad.toml"))
    assert result.returncode == 2
    assert "too short" in one_line_error(result)
    # serve's own checks too: a public key file that is not one.
    (tmp_path / "key.toml").write_text(f'[auth]\npublic_key_file = "{tmp_path}/bad.toml"\n')
    result = run_cli("checkconfig", str(tmp_path / "key.toml"))
    assert result.returncode == 2
    assert "no PEM public key in it" in one_line_error(result)
    # And the environment.
    result = run_cli("checkconfig", env=clean_env(BACKCHANNEL_SERVER_PORT="70000"))
    assert result.returncode == 2
    assert "BACKCHANNEL_SERVER_PORT" in one_line_error(result)
