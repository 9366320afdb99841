"""System checks of the portal's own settings, run by `manage.py check` (`--deploy` for production)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def admin_two_factor(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    if settings.DEBUG or settings.CVM_ADMIN_2FA:
        return []
    return [
        Warning(
            "CVM_ADMIN_2FA is off: staff log in to the admin with a password alone.",
            hint="Leave CVM_ADMIN_2FA unset (on) in production and enrol each staff member with enroll_totp.",
            id="cvm.W001",
        )
    ]


@register(Tags.security, deploy=True)
def metrics_behind_proxy(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    if settings.CVM_TRUSTED_PROXY_ADDRESSES and not settings.CVM_METRICS_TOKEN:
        return [
            Warning(
                "/metrics is closed: behind a proxy every request may come from loopback, so it needs a token.",
                hint="Set CVM_METRICS_TOKEN and give it to the Prometheus scraper as a bearer token.",
                id="cvm.W002",
            )
        ]
    return []
