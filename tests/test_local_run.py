"""`make run`'s var/: the database, keys and logs there are readable by their owner only."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_tls import ensure_tls
from scripts.run_local import prepare_var

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The umask of a typical shell, under which new files come out world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_local_run_makes_an_existing_var_owner_only(tmp_path, permissive_umask):
    var = tmp_path / "var"
    (var / "tls").mkdir(parents=True, mode=0o755)
    for name in ("cvm.sqlite3", "cvm.sqlite3-wal", "secret_key", "local.env", "emulator.log", "tls/ca.pem"):
        (var / name).write_text("x")
        (var / name).chmod(0o644)

    prepare_var(var)

    assert mode(var) == mode(var / "tls") == 0o700
    assert {path.name: mode(path) for path in var.rglob("*") if path.is_file()} == {
        name: 0o600 for name in ("cvm.sqlite3", "cvm.sqlite3-wal", "secret_key", "local.env", "emulator.log", "ca.pem")
    }


def test_local_run_creates_var_owner_only(tmp_path, permissive_umask):
    prepare_var(tmp_path / "var")

    assert mode(tmp_path / "var") == 0o700


def test_tls_files_and_their_directories_are_owner_only(tmp_path, permissive_umask):
    files = ensure_tls(tmp_path / "var" / "tls")

    assert mode(tmp_path / "var") == mode(tmp_path / "var" / "tls") == 0o700
    assert [mode(path) for path in (files.ca_cert, files.server_cert, files.server_key)] == [0o600] * 3


def test_migrate_creates_the_sqlite_database_owner_only_whatever_the_umask(tmp_path):
    var = tmp_path / "var"
    var.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["DATABASE_URL"] = f"sqlite:///{var / 'cvm.sqlite3'}"

    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.umask(0o022),  # the umask of a typical shell
    )

    assert mode(var / "cvm.sqlite3") == 0o600


def test_sqlite_wal_and_shared_memory_files_are_owner_only_while_open(tmp_path, permissive_umask, django_db_blocker):
    from django.db import connection
    from django.db.backends.sqlite3.base import DatabaseWrapper

    database = tmp_path / "cvm.sqlite3"
    # The local default's SQLite settings, whichever database the suite itself runs on.
    sqlite = {"transaction_mode": "IMMEDIATE", "timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"}
    wrapper = DatabaseWrapper(
        {**connection.settings_dict, "ENGINE": "django.db.backends.sqlite3", "NAME": str(database), "OPTIONS": sqlite},
        alias="private-files-check",
    )
    with django_db_blocker.unblock():
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("CREATE TABLE t (x integer)")
                cursor.execute("INSERT INTO t VALUES (1)")
            side_files = [Path(f"{database}-wal"), Path(f"{database}-shm")]
            assert all(path.exists() for path in side_files), "WAL mode, as the settings ask"
            assert [mode(path) for path in (database, *side_files)] == [0o600] * 3
        finally:
            wrapper.close()
