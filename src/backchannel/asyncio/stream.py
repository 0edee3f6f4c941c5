"""A streamed answer to a plain HTTP request: the head now, the body as it comes.

``process_request`` may return a :class:`Stream` instead of a
:class:`~backchannel.protocol.http11.Response` (Server-Sent Events hold one open for as
long as a session lives). The server sends the head, then each chunk the body yields,
waiting for the socket to drain before it asks for the next one, so a client that does
not read holds back the producer instead of filling memory. When the client goes away
or the server stops, the body is closed (``aclose``): its ``finally`` blocks run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..protocol.http11 import Headers

__all__ = ["Stream"]


@dataclass
class Stream:
    """A response whose body is produced while it is sent."""

    status: int
    headers: Headers = field(default_factory=Headers)
    #: The body's chunks; an empty chunk is skipped (it would end a chunked body).
    body: AsyncIterator[bytes] | None = None
