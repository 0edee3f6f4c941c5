"""Incremental UTF-8 validation that fails on the first invalid byte.

RFC 6455 section 8.1: an endpoint that receives invalid UTF-8 in a text message must fail
the connection, and it should do so as soon as the invalid bytes arrive, not at the end of
the message (Autobahn cases 6.4.x check this).
"""

from __future__ import annotations

import codecs
from typing import Protocol

from ..exceptions import InvalidPayload
from .speedups import compiled

__all__ = ["TextValidator", "Utf8Validator", "Utf8ValidatorPy"]

_Decoder = codecs.getincrementaldecoder("utf-8")


class TextValidator(Protocol):
    """What both validators offer."""

    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

    def finish(self) -> None: ...


class Utf8ValidatorPy:
    """Validates a text message fed in chunks of any size (pure Python)."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _Decoder("strict")

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Check one more chunk; raise :class:`InvalidPayload` at the first bad byte."""
        decoder = self._decoder
        try:
            decoder.decode(data, False)
        except UnicodeDecodeError as exc:
            raise InvalidPayload("invalid UTF-8 in text message") from exc
        # CPython's decoder rejects most impossible prefixes at once, but it holds back
        # ED A0..ED BF (the start of a UTF-16 surrogate, never valid in UTF-8) until the
        # third byte arrives. Refuse it now so failure is as early as possible.
        pending = decoder.getstate()[0]
        if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
            raise InvalidPayload("invalid UTF-8 in text message")

    def finish(self) -> None:
        """End of message: a truncated sequence is invalid."""
        try:
            self._decoder.decode(b"", True)
        except UnicodeDecodeError as exc:
            raise InvalidPayload("truncated UTF-8 sequence at end of text message") from exc
        finally:
            self._decoder.reset()


class _Utf8ValidatorCompiled:
    """The same validator on the accelerator's state machine, which decodes nothing."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        # 0: at a character boundary; -1: invalid; other values: inside a character.
        self._state = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Check one more chunk; raise :class:`InvalidPayload` at the first bad byte."""
        assert compiled is not None
        self._state = state = compiled.utf8_feed(self._state, data)
        if state < 0:
            raise InvalidPayload("invalid UTF-8 in text message")

    def finish(self) -> None:
        """End of message: a truncated sequence is invalid."""
        state, self._state = self._state, 0
        if state != 0:
            raise InvalidPayload("truncated UTF-8 sequence at end of text message")


#: The validator the protocol core uses: compiled when the accelerator is in use.
Utf8Validator: type[TextValidator] = Utf8ValidatorPy if compiled is None else _Utf8ValidatorCompiled
