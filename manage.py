#!/usr/bin/env python
"""Django's command-line utility for the CVM portal."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cvm_portal.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A setting the portal refuses (a missing secret, a name AWS would refuse) is one line, not a
        # traceback: it names the variable and what it must be.
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
