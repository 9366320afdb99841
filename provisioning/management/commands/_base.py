"""What every portal command shares: one-line errors and a non-zero exit on bad input."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from provisioning.aws import AwsError
from provisioning.services import ServiceError
from provisioning.tokenfiles import token_file_open


class PortalCommand(BaseCommand):
    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except (ServiceError, AwsError) as exc:
            raise CommandError(str(exc).splitlines()[0]) from None

    @staticmethod
    def actor() -> str:
        """Who ran the command, for the audit log: the login name, marked as coming from the shell."""
        try:
            name = os.environ.get("CVM_ACTOR") or getpass.getuser()
        except Exception:  # noqa: BLE001 - no login name in some containers
            name = "unknown"
        return f"cli:{name}"

    @staticmethod
    def open_token_file(path: str) -> int:
        try:
            return token_file_open(Path(path))
        except FileExistsError:
            raise CommandError(f"{path} already exists; tokens are never written over an existing file") from None
        except OSError as exc:
            raise CommandError(f"cannot create {path}: {exc.strerror}") from None
