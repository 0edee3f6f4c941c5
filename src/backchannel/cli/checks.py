"""Checks made before listening, so a mistake is one line naming the flag or setting."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from .errors import fail


def tls_context(cert: str, key: str | None, names: tuple[str, str]) -> ssl.SSLContext:
    """A server context from PEM files; a mistake in them (missing, swapped, mismatched)
    is one line naming the file and where it was set (``names``: cert's, key's)."""
    cert_name, key_name = names
    for name, path in ((cert_name, cert), (key_name, key)):
        if path is None:
            continue
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as exc:
            fail(f"{name} {path}: cannot read it ({exc.strerror or exc})")
        if name == cert_name and "-----BEGIN CERTIFICATE-----" not in text:
            hint = "; is it the key?" if "PRIVATE KEY-----" in text else ""
            fail(f"{name} {path}: no PEM certificate in it{hint} ({cert_name} takes the chain)")
        if name == key_name and "PRIVATE KEY-----" not in text:
            hint = "; is it the certificate?" if "-----BEGIN CERTIFICATE-----" in text else ""
            fail(f"{name} {path}: no PEM private key in it{hint}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            fail(f"{key_name} {key} is not the private key of {cert_name} {cert}")
        if key is None:
            fail(f"{cert_name} {cert} holds no private key: give it with {key_name}")
        fail(f"{cert_name} {cert} / {key_name} {key}: {exc.reason or exc}")
    return context


def check_host(host: str, name: str) -> None:
    """Resolve the address to listen on now, to say which setting is wrong."""
    if not host:
        return
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        fail(
            f"{name} {host}: cannot resolve it ({reason}); give a name or an address of "
            "this machine, e.g. 127.0.0.1 or 0.0.0.0"
        )


def check_loop(loop: str) -> None:
    if loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            fail("--loop uvloop needs the uvloop package: pip install -e '.[uvloop]'")
