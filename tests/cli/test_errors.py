"""One-line failures with the exit status that says whose mistake it was."""

from __future__ import annotations

from helpers.cli import clean_env, one_line_error, run_cli


def test_a_port_in_use_is_one_line(listening: int) -> None:
    port = str(listening)
    url = "redis://127.0.0.1:1/0"  # the parent of --workers binds before any worker starts
    for args, env in [
        (["echo", "--host", "127.0.0.1", "--port", port], clean_env()),
        (["serve", "--host", "127.0.0.1", "--port", port], clean_env()),
        (["serve", "--port", port, "--workers", "2"], clean_env(BACKCHANNEL_BROKER_URL=url)),
    ]:
        result = run_cli(*args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        line = one_line_error(result)
        assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: the port is in use")
