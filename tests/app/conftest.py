"""Running the standalone server (``App``) on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backchannel.app import App, Config
from backchannel.app.config import ApiConfig, AuthConfig, ServerConfig

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"
API_KEY = "test-api-key"


def make_config(**server: object) -> Config:
    """A config on a free port with known secrets and the demo on; ``server`` overrides
    [server] keys."""
    config = Config(
        # The demo page and token endpoint, off by default, are what the browser tests
        # drive; make_config(demo=False) turns them off again.
        server=ServerConfig(port=0, demo=True),
        auth=AuthConfig(secret=SECRET),
        api=ApiConfig(key=API_KEY),
    )
    for key, value in server.items():
        setattr(config.server, key, value)
    return config


@asynccontextmanager
async def running(config: Config | None = None) -> AsyncIterator[tuple[App, int]]:
    app = App(config or make_config())
    async with app.run() as server:
        yield app, server.port
