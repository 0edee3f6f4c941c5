"""One-line failures: what went wrong, what to do, and the exit status."""

from __future__ import annotations

import errno
import sys
from typing import NoReturn


def fail(message: str, status: int = 2) -> NoReturn:
    """One line on standard error and exit: 2 for a mistake in the command or the
    configuration, 1 for what went wrong while running."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def listen_error(exc: OSError, host: str, port: int) -> str:
    """Why a server cannot listen, in words that say what to do."""
    place = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {place}: the port is in use; stop what uses it, or choose "
            "another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {place}: no such address on this machine; check --host"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {place}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {place}: {exc.strerror or exc}"


def needs_extra(exc: ImportError, extra: str, what: str) -> NoReturn:
    """An optional package is missing: one line naming the extra that brings it."""
    missing = exc.name or "a package"
    fail(f"{what} needs {missing}: pip install -e '.[{extra}]'", 2)
