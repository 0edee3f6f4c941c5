"""Connection and channel tokens: JSON Web Tokens (RFC 7519) checked with PyJWT.

A connection token's ``sub`` is the user id, ``exp`` its expiry (optional), ``info`` an
optional value shown to others in presence. A channel token (for private channels, whose
names start with ``$``) also has ``channel``, the channel it opens, and ``client``, the
connection it was issued to. The two are not interchangeable: :meth:`TokenVerifier.verify`
takes connection tokens only, :meth:`TokenVerifier.verify_channel` channel tokens only.
``sub`` is a non-empty string in both.

Only the algorithms configured are accepted: HS256 with a shared secret, RS256 with a
public key. ``alg: none`` is refused, and so is algorithm confusion (an HS256 token signed
with the RSA public key as its secret): a key is only ever used with its own algorithm.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import jwt

from ..exceptions import InvalidArgument, TokenError, TokenExpired

__all__ = ["Claims", "TokenError", "TokenExpired", "TokenVerifier", "make_token"]


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says."""

    user: str
    expires: int | None
    info: Any = None
    channel: str | None = None
    client: str | None = None


class TokenVerifier:
    """Checks tokens signed with HS256 (``secret``) and/or RS256 (``public_key``)."""

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: str | bytes | None = None,
        leeway: float = 0.0,
    ) -> None:
        if secret is None and public_key is None:
            raise InvalidArgument("a token verifier needs a secret or a public key")
        self._keys: dict[str, str | bytes] = {}
        if secret is not None:
            self._keys["HS256"] = secret
        if public_key is not None:
            self._keys["RS256"] = public_key
        self.leeway = leeway

    def verify(self, token: str) -> Claims:
        """The claims of a valid connection token; raise :class:`TokenExpired` or
        :class:`TokenError`. A channel token (it has ``channel``) is refused: it was
        issued to open one channel, not to say who a connection is."""
        claims = self._check(token)
        if claims.channel is not None:
            raise TokenError("a channel token is not a connection token")
        return claims

    def verify_channel(self, token: str) -> Claims:
        """The claims of a valid channel token (one with ``channel``); raise
        :class:`TokenExpired` or :class:`TokenError`. A connection token is refused."""
        claims = self._check(token)
        if claims.channel is None:
            raise TokenError("not a channel token: it has no channel claim")
        return claims

    def _check(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._keys:
            raise TokenError(f"algorithm {alg!r} is not accepted")
        key = self._keys[alg]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                # exp is checked below, once its type is known: PyJWT would take
                # "exp": true for the number 1 and call a malformed token expired.
                options={"require": ["sub"], "verify_aud": False, "verify_exp": False},
                leeway=self.leeway,
            )
        except jwt.PyJWTError as exc:
            raise TokenError("invalid token") from exc
        sub = claims.get("sub")
        exp = claims.get("exp")
        channel = claims.get("channel")
        client = claims.get("client")
        # An empty user id would make every such connection the same user "", the one
        # anonymous connections have: a user is named by the backend, never by omission.
        if not isinstance(sub, str) or not sub:
            raise TokenError("invalid claims: sub must be a non-empty string")
        # RFC 7519 section 2: a NumericDate may have a fraction; a boolean is not one.
        if "exp" in claims and (
            exp is None
            or isinstance(exp, bool)
            or not isinstance(exp, int | float)
            or (isinstance(exp, float) and not math.isfinite(exp))
        ):
            raise TokenError("invalid claims: exp must be a number")
        if channel is not None and (not isinstance(channel, str) or not channel):
            raise TokenError("invalid claims: channel must be a non-empty string")
        if client is not None and not isinstance(client, str):
            raise TokenError("invalid claims: client must be a string")
        expires = None if exp is None else math.floor(exp)
        if expires is not None and expires <= time.time() - self.leeway:
            raise TokenExpired("token expired")
        return Claims(sub, expires, claims.get("info"), channel, client)


def make_token(
    secret: str | bytes,
    user: str,
    *,
    ttl: float | None = None,
    info: Any = None,
    channel: str | None = None,
    client: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for ``user`` (a channel token with ``channel``), valid ``ttl``
    seconds from ``now`` (default: the current time) or without expiry."""
    claims: dict[str, Any] = {"sub": user}
    if ttl is not None:
        claims["exp"] = int((time.time() if now is None else now) + ttl)
    if info is not None:
        claims["info"] = info
    if channel is not None:
        claims["channel"] = channel
    if client is not None:
        claims["client"] = client
    return jwt.encode(claims, secret, algorithm="HS256")
