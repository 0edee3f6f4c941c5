"""Runs the application's handlers in order, in a task of their own."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Dispatcher", "Handler"]

logger = logging.getLogger("backchannel.client")

#: A handler: a plain function, or a coroutine function (awaited before the next event).
Handler = Callable[[Any], Any]


class Dispatcher:
    """A bounded queue of (handler, argument) pairs and the task that calls them.

    Handlers run outside the connection's reader, so a handler may await a command (a
    reply needs the reader) without a deadlock, and a slow handler never holds up
    replies. Events keep their order. When ``max_pending`` events wait, the oldest
    droppable one (a publication) is dropped and counted by the caller.
    """

    def __init__(self, on_error: Callable[[BaseException], None], max_pending: int) -> None:
        self._on_error = on_error
        self._max_pending = max_pending
        self._pending: deque[tuple[Handler, Any, bool]] = deque()
        self._task: asyncio.Task[None] | None = None

    def post(self, handler: Handler | None, arg: Any, *, droppable: bool = False) -> bool:
        """Queue a call; False when an older droppable event was dropped to make room."""
        if handler is None:
            return True
        kept = True
        if len(self._pending) >= self._max_pending:
            kept = False
            for i, (_, _, can_drop) in enumerate(self._pending):
                if can_drop:
                    del self._pending[i]
                    break
            else:
                self._pending.popleft()
        self._pending.append((handler, arg, droppable))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return kept

    async def _run(self) -> None:
        while self._pending:
            handler, arg, _ = self._pending.popleft()
            try:
                result = handler(arg)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_error(exc)

    async def aclose(self) -> None:
        """Drop what is pending and stop (a handler still running is cancelled)."""
        self._pending.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def log_handler_error(exc: BaseException) -> None:
    """Where a failing error handler's own exception goes: the log."""
    logger.error("error in a backchannel client handler", exc_info=exc)
