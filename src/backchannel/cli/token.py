"""``backchannel token``: a connection or channel token, for testing."""

from __future__ import annotations

import argparse
import json
import sys

from ..hub.token import make_token
from .config import load


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
