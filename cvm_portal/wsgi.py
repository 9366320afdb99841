"""WSGI entry point, served by gunicorn."""

import os

import django
from django.core.handlers.wsgi import WSGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cvm_portal.settings")
django.setup(set_prefix=False)

from provisioning.middleware import PortalRequest  # noqa: E402 - needs the settings loaded above


class PortalWSGIHandler(WSGIHandler):
    # A Content-Type header Django cannot parse must reach the middleware that refuses it (400),
    # instead of failing while the request is built (500).
    request_class = PortalRequest


application = PortalWSGIHandler()
