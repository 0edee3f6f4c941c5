"""Transports: how a session's replies and pushes reach its client.

Each transport drains its session's outbox its own way: WebSocket writes frames
(:mod:`.websocket`), long polling answers held polls with batches (:mod:`.longpoll`).
They are the only hub modules that touch the asyncio layer. This package's ``__init__``
imports nothing, so that :mod:`.base` can be imported by the session without the
transports.
"""
