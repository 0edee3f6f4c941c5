"""``backchannel token``: a connection or channel token, for testing; ``checktoken``:
whether the server would take one, and what it says."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..exceptions import TokenError
from ..hub.token import Claims, TokenVerifier, make_token
from .config import load
from .errors import fail


def token(args: argparse.Namespace) -> int:
    config = load(args)
    if not config.auth.secret:
        print(
            "error: no secret to sign with: set [auth] secret in --config, or "
            "BACKCHANNEL_AUTH_SECRET (the server must use the same one)",
            file=sys.stderr,
        )
        return 2
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except ValueError:
            print("error: --info must be JSON", file=sys.stderr)
            return 2
    print(make_token(config.auth.secret, args.sub, ttl=args.ttl, info=info, channel=args.channel))
    return 0


def checktoken(args: argparse.Namespace) -> int:
    """Verify a token as the server would (auth.secret, auth.public_key_file): print its
    claims as JSON, or why it is refused (status 1)."""
    config = load(args)
    public_key = None
    if config.auth.public_key_file:
        try:
            public_key = Path(config.auth.public_key_file).read_bytes()
        except OSError as exc:
            fail(f"auth.public_key_file {config.auth.public_key_file}: cannot read it ({exc})")
    if not config.auth.secret and public_key is None:
        fail(
            "nothing to verify with: set [auth] secret or public_key_file in --config, or "
            "BACKCHANNEL_AUTH_SECRET (the server's own)"
        )
    verifier = TokenVerifier(secret=config.auth.secret or None, public_key=public_key)
    try:
        claims: Claims = verifier.verify(args.token)
        kind = "connection"
    except TokenError as exc:
        try:
            # A channel token is refused as a connection token, and the other way round:
            # either is a token the server takes, each for its own use.
            claims = verifier.verify_channel(args.token)
            kind = "channel"
        except TokenError:
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            fail(f"token refused: {exc}{cause}", 1)
    answer: dict[str, Any] = {"valid": kind, "user": claims.user, "expires": claims.expires}
    for name in ("info", "channel", "client"):
        if getattr(claims, name) is not None:
            answer[name] = getattr(claims, name)
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser(
        "checktoken",
        help="verify a token with the configured secret or public key; print its claims",
        description="Verify a connection or channel token as the server would, with "
        "auth.secret (or BACKCHANNEL_AUTH_SECRET) and auth.public_key_file, and print its "
        "claims as JSON, or one line saying why it is refused. Exit status: 0 valid, 1 "
        "refused, 2 for a mistake in the command or the configuration.",
    )
    parser.add_argument("token", help="the token (a JWT)")
    parser.add_argument("--config", help="TOML file with [auth] secret or public_key_file")
    parser.set_defaults(handler=checktoken)
