"""The configuration of a command: its file (``--config``), the environment, then flags;
``checkconfig``, which loads it and says whether it is right; ``genconfig``, which
prints a starter file with a fresh secret and API key."""

from __future__ import annotations

import argparse
import os
import secrets
from typing import Any

from ..app import Config, load_config
from ..exceptions import InvalidArgument
from .errors import fail
from .serve import check_serve


def load(args: argparse.Namespace) -> Config:
    """The configuration: file, environment, then flags; a mistake exits with one line."""
    try:
        config = load_config(args.config, os.environ)
    except InvalidArgument as exc:
        fail(str(exc))
    for name in ("host", "port", "tls_cert", "tls_key"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config.server, name, value)
    if getattr(args, "demo", False):
        config.server.demo = True
    # The log flags of serve: checked by argparse's choices, they need no check here.
    if getattr(args, "log_level", None) is not None:
        config.log.level = args.log_level
    if getattr(args, "log_format", None) is not None:
        config.log.format = args.log_format
    return config


def checkconfig(args: argparse.Namespace) -> int:
    """Load the file and the environment as ``serve`` would, and run its checks (TLS
    files, the public key, the address): OK, or the one line ``serve`` would fail with."""
    config = load(args)
    check_serve(args, config)
    where = args.config or "the defaults"
    print(f"{where}: OK (with the BACKCHANNEL_* environment)")
    return 0


#: Bytes of randomness of the secret genconfig writes (auth.secret needs 32 characters).
GENERATED_SECRET_BYTES = 32
#: Bytes of randomness of the API key genconfig writes (api.key needs 16 characters).
GENERATED_KEY_BYTES = 24

STARTER = """\
# backchannel serve --config backchannel.toml
# Made by `backchannel genconfig`. Every setting, with its default: docs/config.md.
# BACKCHANNEL_* variables override this file (BACKCHANNEL_AUTH_SECRET, ...).
# Keep this file private (chmod 600): the secret signs tokens, the key rules the API.

[server]
host = "127.0.0.1"        # 0.0.0.0 to listen on every address
port = 8000
# tls_cert = "cert.pem"   # PEM chain: serves https:// and wss://
# tls_key = "key.pem"
# origins = ["https://example.com"]   # pages allowed to connect (empty: any)

[auth]
# HS256 secret of connection tokens: your backend signs them with it.
secret = "{secret}"
# public_key_file = "backend.pem"     # or accept RS256 tokens your backend signs

[api]
# The HTTP API's key: Authorization: apikey KEY (backchannel publish --api-key KEY).
key = "{key}"

[log]
level = "info"            # debug, info, warning or error
format = "text"           # or json, for log collectors

[broker]
# url = "redis://127.0.0.1:6379/0"    # several nodes act as one hub

# [channels.chat]                     # a namespace: chat:lobby, chat:room-1, ...
# history_size = 100
# presence = true
"""


def genconfig(args: argparse.Namespace) -> int:
    """Print a commented starter file with a fresh secret and API key."""
    print(starter(), end="")
    return 0


def starter() -> str:
    return STARTER.format(
        secret=secrets.token_urlsafe(GENERATED_SECRET_BYTES),
        key=secrets.token_urlsafe(GENERATED_KEY_BYTES),
    )


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser(
        "checkconfig",
        help="check a config file (and the BACKCHANNEL_* environment): OK, or what is wrong",
        description="Load a config file and the BACKCHANNEL_* environment as serve would, "
        "with serve's checks (TLS files, the public key, the address to listen on), and "
        "print OK or the one line that names the mistake. Exit status: 0 when it is right, "
        "2 when not.",
    )
    parser.add_argument("config", nargs="?", help="the TOML file (none: the environment only)")
    parser.set_defaults(
        handler=checkconfig, host=None, port=None, tls_cert=None, tls_key=None, loop="asyncio"
    )
    parser = commands.add_parser(
        "genconfig",
        help="print a commented starter config with a fresh secret and API key",
        description="Print a commented starter config file on standard output, with a "
        "fresh random token secret and HTTP API key: backchannel genconfig > "
        "backchannel.toml, then backchannel serve --config backchannel.toml.",
    )
    parser.set_defaults(handler=genconfig)
