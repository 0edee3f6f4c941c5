"""The hub of the shop, and the ASGI app that serves it (mounted at /realtime by asgi.py).

The hub knows who a connection is from the site's login cookie, signed by Django
(``authenticate`` reads it from the ASGI scope), and lets a user follow their own orders
only (``authorize_subscribe``).
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

from django.core import signing

from backchannel.asgi import HubApp
from backchannel.exceptions import CommandError
from backchannel.hub import ChannelOptions, Connected, Hooks, Hub, HubOptions, Session, codes

from .orders import ORDERS

COOKIE = "shop_user"


def login_cookie(user: str) -> str:
    """The login cookie's value: the user, signed with the site's SECRET_KEY."""
    return signing.Signer(salt="shop.login").sign(user)


def user_from_cookie(value: str | None) -> str | None:
    """The user a login cookie was signed for, or None (no cookie, or a forged one)."""
    if not value:
        return None
    try:
        return signing.Signer(salt="shop.login").unsign(value)
    except signing.BadSignature:
        return None


async def authenticate(scope: dict[str, Any]) -> Connected | None:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            jar.load(value.decode("latin-1"))
    morsel = jar.get(COOKIE)
    user = user_from_cookie(morsel.value if morsel is not None else None)
    return Connected(user) if user else None


class ShopHooks(Hooks):
    async def authorize_subscribe(self, session: Session, channel: str) -> None:
        order = ORDERS.get(channel.removeprefix("orders:"))
        if order is None or order["owner"] != session.user:
            raise CommandError(codes.PERMISSION_DENIED)


hub = Hub(
    HubOptions(namespaces={"orders": ChannelOptions(history_size=1, publish="server")}),
    hooks=ShopHooks(),
)
realtime = HubApp(hub, authenticate=authenticate)
