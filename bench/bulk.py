"""The `bulk` benchmark: `import_serials` and `issue_tokens` for 100,000 serials, on SQLite and PostgreSQL.

Each command runs in a process of its own (start-up included), as an operator runs it. After each one the
audit sequencer chains the events the command wrote, timed in a process of its own as well
(`python -m bench.bulk chain` prints one JSON line). PostgreSQL is the server on 127.0.0.1:5432 (user
`postgres`); the benchmark creates and drops its own database, and is skipped with a message when no
server answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.processes import PYTHON, ROOT
from scripts.processes import manage as manage_process

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# One per process: two benchmark runs at once must not drop each other's database.
POSTGRES_DATABASE = f"cvm_bulk_bench_{os.getpid()}"
LIMIT_SECONDS = 5.0


def timed_command(env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of one management command in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen([PYTHON, "manage.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{args[0]} failed")
    return elapsed, usage.ru_maxrss / 1024


def chain_seconds(env: dict[str, str]) -> tuple[int, float]:
    """How many events the sequencer chained, and how long `audit_chain_pending` took (no start-up)."""
    result = subprocess.run(
        [PYTHON, "-m", "bench.bulk", "chain"], cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "cvm_portal.settings"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return data["chained"], data["seconds"]


def psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.Error


def _postgres_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=3, **POSTGRES) as connection:
        connection.execute(statement)


def postgres_env(env: dict[str, str]) -> dict[str, str] | None:
    """`env` pointing at a fresh benchmark database, or None (with a message) when PostgreSQL is not there."""
    try:
        _postgres_admin(f"DROP DATABASE IF EXISTS {POSTGRES_DATABASE}")
        _postgres_admin(f"CREATE DATABASE {POSTGRES_DATABASE}")
    except (ImportError, OSError, psycopg_error()) as exc:
        print(f"bulk: PostgreSQL at {POSTGRES['host']}:{POSTGRES['port']} not usable, skipped ({exc})", flush=True)
        return None
    url = f"postgres://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{POSTGRES_DATABASE}"
    env = {**env, "DATABASE_URL": url}
    manage_process(env, "migrate", "-v0")
    return env


def run_once(env: dict[str, str], work: Path, count: int, label: str) -> dict[str, Any]:
    source = work / f"bulk-{label}.csv"
    source.write_text("serial,product\n" + "".join(f"BULK-{i:06d},meter\n" for i in range(count)))
    load = os.getloadavg()[0]
    import_seconds, import_mib = timed_command(env, "import_serials", str(source))
    import_chained, import_chain_seconds = chain_seconds(env)
    tokens_seconds, tokens_mib = timed_command(
        env, "issue_tokens", "--all-registered", "--out", str(work / f"bulk-{label}-tokens.csv")
    )
    tokens_chained, tokens_chain_seconds = chain_seconds(env)
    return {
        f"{label}: load average (1 min) at start": load,
        f"{label}: import_serials s": import_seconds,
        f"{label}: import_serials peak RSS MiB": import_mib,
        f"{label}: audit_chain_pending after import, events / s": f"{import_chained} / {import_chain_seconds:.2f}",
        f"{label}: issue_tokens s": tokens_seconds,
        f"{label}: issue_tokens peak RSS MiB": tokens_mib,
        f"{label}: audit_chain_pending after tokens, events / s": f"{tokens_chained} / {tokens_chain_seconds:.2f}",
        f"{label}: load average (1 min) at end": os.getloadavg()[0],
    }


def bench_bulk(sqlite_env: dict[str, str], work: Path, count: int = 100_000) -> dict[str, Any]:
    figures: dict[str, Any] = {"serials": count}
    figures.update(run_once(sqlite_env, work, count, "SQLite"))
    seconds = [figures["SQLite: import_serials s"], figures["SQLite: issue_tokens s"]]
    pg_env = postgres_env(sqlite_env)
    if pg_env is not None:
        try:
            figures.update(run_once(pg_env, work, count, "PostgreSQL"))
            seconds += [figures["PostgreSQL: import_serials s"], figures["PostgreSQL: issue_tokens s"]]
        finally:
            _postgres_admin(f"DROP DATABASE IF EXISTS {POSTGRES_DATABASE} WITH (FORCE)")
    return {
        "name": "bulk",
        "figures": figures,
        "target": f"each <= {LIMIT_SECONDS:.0f} s (process start included), on SQLite and PostgreSQL",
        "met": pg_env is not None and all(s <= LIMIT_SECONDS for s in seconds),
        "env": sqlite_env,
    }


def _chain() -> dict[str, Any]:
    from provisioning.audit import audit_chain_pending

    started = time.perf_counter()
    chained = audit_chain_pending()
    return {"chained": chained, "seconds": time.perf_counter() - started}


if __name__ == "__main__":
    if sys.argv[1:] == ["chain"]:
        import django

        django.setup()
        print(json.dumps(_chain()))
