"""Settings of the smallest Django project that shows an order's status live: no
database, no installed apps, no templates."""

import os
import secrets

DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# Made up at start here (a restart logs everybody out); a real site reads its own.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
# No session or CSRF middleware: the login is a signed cookie (django.core.signing), and
# the status route is for the shop's backend (guard it in a real site).
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
