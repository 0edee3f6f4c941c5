"""Checks before listening: TLS files and the host, named by flag or setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import one_line_error, run_cli


def test_a_host_that_does_not_resolve_is_named() -> None:
    for command in ("serve", "echo"):
        result = run_cli(command, "--host", "nowhere.invalid", "--port", "0")
        assert result.returncode == 2
        assert one_line_error(result).startswith("error: --host nowhere.invalid: cannot resolve")


@pytest.mark.parametrize("command", ["serve", "echo"])
@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("absent", "key", "error: --tls-cert {absent}: cannot read it (No such file"),
        ("cert", "absent", "error: --tls-key {absent}: cannot read it (No such file"),
        ("key", "cert", "error: --tls-cert {key}: no PEM certificate in it; is it the key?"),
        ("cert", "cert", "error: --tls-key {cert}: no PEM private key in it; is it the cert"),
        ("cert", "other", "error: --tls-key {other} is not the private key of --tls-cert {cert}"),
        (None, "key", "error: --tls-key needs a certificate: give --tls-cert too"),
    ],
)
def test_tls_file_mistakes_name_the_file_and_the_flag(
    command: str,
    cert: str | None,
    key: str,
    message: str,
    pem_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    files = {**{name: str(path) for name, path in pem_files.items()}}
    files["absent"] = str(tmp_path / "absent.pem")
    args = [command, "--host", "127.0.0.1", "--port", "0", "--tls-key", files[key]]
    if cert is not None:
        args += ["--tls-cert", files[cert]]
    result = run_cli(*args)
    assert result.returncode == 2
    assert one_line_error(result).startswith(message.format(**files))


def test_a_tls_file_from_the_config_is_named_by_its_setting(
    tmp_path: Path, pem_files: dict[str, Path]
) -> None:
    config = tmp_path / "tls.toml"
    config.write_text(f'[server]\ntls_cert = "{pem_files["cert"]}"\ntls_key = "{tmp_path}/x"\n')
    result = run_cli("serve", "--port", "0", "--config", str(config))
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"error: server.tls_key {tmp_path}/x: cannot read")
