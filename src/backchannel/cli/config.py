"""The configuration of a command: its file (``--config``), the environment, then flags."""

from __future__ import annotations

import argparse
import os

from ..app import Config, load_config
from ..exceptions import InvalidArgument
from .errors import fail


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
    return config
