"""WSGI entry point, served by gunicorn."""

import contextlib
import os

import django
from django.core.handlers.wsgi import WSGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cvm_portal.settings")
django.setup(set_prefix=False)

from django.urls import get_resolver  # noqa: E402 - needs the settings loaded above

from provisioning import aws, governor  # noqa: E402
from provisioning.middleware import PortalRequest  # noqa: E402


class PortalWSGIHandler(WSGIHandler):
    # A Content-Type header Django cannot parse must reach the middleware that refuses it (400),
    # instead of failing while the request is built (500).
    request_class = PortalRequest


def warm_up() -> None:
    """Import every view, build the AWS clients and the quota governor's Redis client before the worker
    takes its first request.

    Left to the first requests, each new worker's first vends wait for Django to import the API, DRF and
    the serializers, for botocore to load the AWS IoT and DynamoDB service models and for the Redis client
    to be imported: one to three seconds of CPU, paid while a burst of devices is waiting. Nothing here
    goes over the network.
    """
    get_resolver().url_patterns  # noqa: B018 - importing the URL conf imports the views
    governor.backend()
    with contextlib.suppress(aws.AwsError):  # a misconfiguration is reported by readiness and the vend
        aws.iot_client()
        aws.dynamodb_client()


warm_up()
application = PortalWSGIHandler()
