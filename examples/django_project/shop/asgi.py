"""The ASGI application of the site: /realtime goes to the hub, the rest to Django; the
hub starts and stops with the application (lifespan)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
# Django first: it sets itself up before anything imports a model or a setting.
django_app = get_asgi_application()

from backchannel.asgi import route  # noqa: E402

from .realtime import realtime  # noqa: E402

application = route("/realtime", realtime, django_app)
