"""The standalone server: configuration, the HTTP API, the demo, and ``App`` that serves
them with the hub on one port (``backchannel serve``)."""

from __future__ import annotations

from .api import HttpApi
from .config import Config, load_config
from .ratelimit import RateLimiter
from .server import App

__all__ = ["App", "Config", "HttpApi", "RateLimiter", "load_config"]
