"""What every portal command shares: one-line errors and a non-zero exit on bad input.

Options that take several values use `action="extend"` with `nargs="+"`, so `--serial A B`,
`--serial A --serial B` and mixtures all keep every value: argparse's plain `nargs="+"` keeps only the
last occurrence of a repeated option, silently (tests/test_command_parsers.py walks every parser).
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from provisioning.aws import AwsError
from provisioning.services import ServiceError, aws_failure_advice
from provisioning.tokenfiles import token_file_open
from provisioning.validators import InputInvalid, product_name_check, token_ttl_check


def ttl_days_arg(value: str) -> int:
    """argparse type of every --ttl-days: the one lifetime rule, before the command changes anything."""
    try:
        return token_ttl_check(int(value))
    except ValueError as exc:  # InputInvalid is a ValueError; so is int("x")
        message = str(exc) if isinstance(exc, InputInvalid) else f"{value!r} is not a whole number of days"
        raise argparse.ArgumentTypeError(message) from None


def product_arg(value: str) -> str:
    """argparse type of every --product: a name AWS IoT accepts as a thing attribute value."""
    try:
        return product_name_check(value)
    except InputInvalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_ttl_days(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ttl-days", type=ttl_days_arg, metavar="N", help="token lifetime, 1 to 3650 days (default CVM_TOKEN_TTL_DAYS)"
    )


class PortalCommand(BaseCommand):
    def create_parser(self, prog_name: str, subcommand: str, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        django_error = parser.error

        def one_line_error(message: str) -> None:
            # argparse prints the whole usage block before the error; bad input gets one line, and
            # `--help` still shows the usage.
            if parser.called_from_command_line:
                parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
            django_error(message)

        parser.error = one_line_error  # type: ignore[method-assign]
        parse_known_args = parser.parse_known_args

        def refusing_repeats(args=None, namespace=None):
            # argparse keeps only the last of a repeated single-value option (`--to a --to b` writes to b
            # alone): nothing a user typed may be dropped silently, so a repeat is an error.
            single = {
                option: action
                for action in parser._actions
                if type(action) is argparse._StoreAction
                for option in action.option_strings
            }
            given: dict[str, str] = {}
            for word in args or []:
                option = str(word).split("=", 1)[0]
                action = single.get(option)
                if action is None:
                    continue
                if action.dest in given:
                    parser.error(f"{option} was given more than once; give it once")
                given[action.dest] = option
            return parse_known_args(args, namespace)

        parser.parse_known_args = refusing_repeats  # type: ignore[method-assign]
        return parser

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except AwsError as exc:
            raise CommandError(aws_failure_advice(exc)) from None
        except (ServiceError, InputInvalid) as exc:
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
