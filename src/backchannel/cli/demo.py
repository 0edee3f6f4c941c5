"""The demo's secret and API key, kept in a file across restarts.

``serve --demo`` without ``auth.secret`` or ``api.key`` would make up new ones at each
start: the tokens of an open demo page, and an API key pasted into a shell, would stop
working at every restart. The demo keeps them in a state file instead, readable by its
owner only. A run without ``--demo`` keeps the per-process random ones: a production
server is configured, and a secret lying in a file it was never told about is a leak.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path

from ..app import Config
from .errors import fail

#: Bytes of randomness in a made-up secret (more than the 32 characters auth.secret needs).
SECRET_BYTES = 32
#: Bytes of randomness in a made-up API key.
API_KEY_BYTES = 24


def state_file(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/backchannel/demo.toml``, by default under ``~/.local/state``."""
    base = environ.get("XDG_STATE_HOME") or ""
    # The XDG spec: a relative path is invalid and is to be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "backchannel" / "demo.toml"


def keep_credentials(config: Config, environ: Mapping[str, str]) -> Path | None:
    """Fill ``auth.secret`` and ``api.key``, where not configured, from the state file
    (made on first use, mode 0600 in a 0700 directory). The file's path, or None when
    both were configured (nothing is read or written then)."""
    if config.auth.secret and config.api.key:
        return None
    path = state_file(environ)
    saved = _read(path)
    if "secret" not in saved or "api_key" not in saved:
        saved = {
            "secret": secrets.token_urlsafe(SECRET_BYTES),
            "api_key": secrets.token_urlsafe(API_KEY_BYTES),
        }
        _write(path, saved)
    config.auth.secret = config.auth.secret or saved["secret"]
    config.api.key = config.api.key or saved["api_key"]
    return path


def _read(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(f"demo state file {path}: cannot read it ({exc}); fix or delete it")
    return {key: value for key, value in data.items() if isinstance(value, str) and value}


def _write(path: Path, values: dict[str, str]) -> None:
    text = (
        "# Made by `backchannel serve --demo`: the demo's token secret and HTTP API key,\n"
        "# kept so that a restart strands no open page. Delete it for new ones.\n"
        + "".join(f'{key} = "{value}"\n' for key, value in values.items())
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created with owner-only permissions from the start: never readable by others,
        # not even between a create and a chmod.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        os.chmod(path, 0o600)  # an older file of wider mode keeps its mode through O_CREAT
    except OSError as exc:
        fail(f"demo state file {path}: cannot write it ({exc.strerror or exc})")
