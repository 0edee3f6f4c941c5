"""Connection and channel tokens: JSON Web Tokens (RFC 7519) checked with PyJWT.

A connection token's ``sub`` is the user id, ``exp`` its expiry (optional), ``info`` an
optional value shown to others in presence. A channel token (for private channels, whose
names start with ``$``) also has ``channel``, the channel it opens, and ``client``, the
connection it was issued to.

Only the algorithms configured are accepted: HS256 with a shared secret, RS256 with a
public key. ``alg: none`` is refused, and so is algorithm confusion (an HS256 token signed
with the RSA public key as its secret): a key is only ever used with its own algorithm.
"""

from __future__ import annotations

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
        """The claims of a valid token; raise :class:`TokenExpired` or :class:`TokenError`."""
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
                options={"require": ["sub"], "verify_aud": False},
                leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("token expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid token") from exc
        sub = claims.get("sub")
        exp = claims.get("exp")
        channel = claims.get("channel")
        client = claims.get("client")
        if not isinstance(sub, str) or (exp is not None and not isinstance(exp, int)):
            raise TokenError("invalid claims")
        if channel is not None and not isinstance(channel, str):
            raise TokenError("invalid claims")
        if client is not None and not isinstance(client, str):
            raise TokenError("invalid claims")
        return Claims(sub, exp, claims.get("info"), channel, client)


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
