"""Load cvm_portal/settings.py under another environment, as a process starting with it would."""

from __future__ import annotations

import importlib
from typing import Any

import pytest


def settings_under(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """The settings module's values with `env` added to the environment (ImproperlyConfigured propagates).

    The module is loaded again with the test environment afterwards, so nothing leaks into later tests.
    """
    import cvm_portal.settings as portal_settings

    try:
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            return dict(vars(importlib.reload(portal_settings)))
    finally:
        importlib.reload(portal_settings)
