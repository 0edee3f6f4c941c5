"""Connection and channel tokens: HS256 and RS256 accepted, everything else refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from backchannel.exceptions import InvalidArgument
from backchannel.hub.token import TokenError, TokenExpired, TokenVerifier

SECRET = "a-shared-secret-of-at-least-32-bytes!"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(claims: dict[str, object], key: bytes) -> str:
    """An HS256 token signed with any bytes as the key (PyJWT refuses PEM keys)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def test_hs256_token_gives_its_claims() -> None:
    exp = int(time.time()) + 60
    token = jwt.encode({"sub": "alice", "exp": exp, "info": {"name": "A"}}, SECRET, "HS256")
    claims = TokenVerifier(secret=SECRET).verify(token)
    assert (claims.user, claims.expires, claims.info) == ("alice", exp, {"name": "A"})


def test_rs256_token_gives_its_claims(rsa_keys: tuple[bytes, bytes]) -> None:
    private, public = rsa_keys
    token = jwt.encode({"sub": "bob", "channel": "$c", "client": "x"}, private, "RS256")
    claims = TokenVerifier(public_key=public).verify_channel(token)
    assert (claims.user, claims.expires, claims.channel, claims.client) == ("bob", None, "$c", "x")


def test_expired_token_is_told_apart() -> None:
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, SECRET, "HS256")
    with pytest.raises(TokenExpired):
        TokenVerifier(secret=SECRET).verify(token)
    # Within the leeway it still counts.
    assert TokenVerifier(secret=SECRET, leeway=30).verify(token).user == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "a.b.c",
        jwt.encode({"sub": "alice"}, "another-secret-of-at-least-32-bytes", "HS256"),
        jwt.encode({"sub": "alice"}, None, "none"),
        jwt.encode({"user": "alice"}, SECRET, "HS256"),  # no sub
        jwt.encode({"sub": 42}, SECRET, "HS256"),
        jwt.encode({"sub": "alice", "channel": 1}, SECRET, "HS256"),
        jwt.encode({"sub": "alice"}, SECRET * 2, "HS512"),  # not configured
        # Every connection with an empty sub would be the same user "".
        jwt.encode({"sub": ""}, SECRET, "HS256"),
        hs256_by_hand({"sub": None}, SECRET.encode()),
        hs256_by_hand({"sub": ["alice"]}, SECRET.encode()),
        # A channel token opens one channel; it does not say who a connection is.
        jwt.encode({"sub": "alice", "channel": "$orders:1"}, SECRET, "HS256"),
        # Not a NumericDate (RFC 7519 section 2): not "expired", malformed.
        hs256_by_hand({"sub": "alice", "exp": True}, SECRET.encode()),
        hs256_by_hand({"sub": "alice", "exp": "2000000000"}, SECRET.encode()),
        hs256_by_hand({"sub": "alice", "exp": None}, SECRET.encode()),
        hs256_by_hand({"sub": "alice", "client": 7}, SECRET.encode()),
    ],
    ids=[
        "garbage",
        "three-parts",
        "forged",
        "alg-none",
        "no-sub",
        "sub-not-str",
        "bad-channel",
        "hs512",
        "empty-sub",
        "null-sub",
        "list-sub",
        "channel-token",
        "exp-bool",
        "exp-str",
        "exp-null",
        "client-not-str",
    ],
)
def test_invalid_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError) as info:
        TokenVerifier(secret=SECRET).verify(token)
    assert not isinstance(info.value, TokenExpired)


def test_algorithm_confusion_is_refused(rsa_keys: tuple[bytes, bytes]) -> None:
    private, public = rsa_keys
    # An attacker signs with HMAC, using the (public) RSA key as the secret.
    confused = hs256_by_hand({"sub": "admin"}, public)
    with pytest.raises(TokenError):
        TokenVerifier(public_key=public).verify(confused)
    # With both configured, HS256 is checked with the secret only, never the public key.
    with pytest.raises(TokenError):
        TokenVerifier(secret=SECRET, public_key=public).verify(confused)
    # And an RS256 token is not checked as HMAC with the secret.
    token = jwt.encode({"sub": "bob"}, private, "RS256")
    assert TokenVerifier(secret=SECRET, public_key=public).verify(token).user == "bob"
    with pytest.raises(TokenError):
        TokenVerifier(secret=SECRET).verify(token)


def test_a_verifier_needs_a_key() -> None:
    with pytest.raises(InvalidArgument):
        TokenVerifier()


@pytest.mark.parametrize(
    "token",
    [
        # A connection token is not a channel token, whatever else it says.
        jwt.encode({"sub": "alice"}, SECRET, "HS256"),
        jwt.encode({"sub": "alice", "client": "x"}, SECRET, "HS256"),
        jwt.encode({"sub": "", "channel": "$orders:1"}, SECRET, "HS256"),
        jwt.encode({"sub": "alice", "channel": ""}, SECRET, "HS256"),
        hs256_by_hand({"sub": "alice", "channel": "$c", "exp": False}, SECRET.encode()),
    ],
    ids=["connection-token", "connection-token-with-client", "empty-sub", "empty-channel", "exp"],
)
def test_invalid_channel_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError) as info:
        TokenVerifier(secret=SECRET).verify_channel(token)
    assert not isinstance(info.value, TokenExpired)


def test_a_channel_token_gives_its_claims_and_expires() -> None:
    verifier = TokenVerifier(secret=SECRET)
    exp = int(time.time()) + 60
    token = jwt.encode({"sub": "bob", "channel": "$c", "exp": exp}, SECRET, "HS256")
    claims = verifier.verify_channel(token)
    assert (claims.user, claims.channel, claims.expires) == ("bob", "$c", exp)
    old = jwt.encode({"sub": "bob", "channel": "$c", "exp": int(time.time()) - 5}, SECRET)
    with pytest.raises(TokenExpired):
        verifier.verify_channel(old)


def test_a_fractional_exp_is_a_numeric_date() -> None:
    # RFC 7519 section 2 allows a fraction; the expiry is rounded down (never later).
    exp = time.time() + 60.75
    token = jwt.encode({"sub": "alice", "exp": exp}, SECRET, "HS256")
    assert TokenVerifier(secret=SECRET).verify(token).expires == int(exp)
    past = jwt.encode({"sub": "alice", "exp": time.time() - 5.5}, SECRET, "HS256")
    with pytest.raises(TokenExpired):
        TokenVerifier(secret=SECRET).verify(past)
