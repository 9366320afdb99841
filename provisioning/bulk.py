"""Set-based writes for the few places that change 100,000 rows at once.

The ORM's bulk_create spends most of its time building and preparing model instances (about 50 s for a
100,000-serial import); here the rows are tuples of values the database driver takes as they are. On
PostgreSQL they go in through `COPY`, which the server parses in one stream; one INSERT per row, even
pipelined, costs a round of parsing, planning and protocol per row. On SQLite they go in as INSERTs of
many rows each (`VALUES (…), (…), …`): `executemany` runs its statement once per row, and each run
opens a cursor on the table and on every one of its indexes (eight on the audit log) and closes them
again, which took half of the insert's time (1.1 s against 0.5 s for 100,000 audit events).
"""

from __future__ import annotations

import functools
import itertools
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Model

from . import prepared

BATCH = 5000
# SQLite's page cache for a bulk write (BATCH rows or more), in KiB (a negative cache_size is KiB). The
# default 2 MiB cannot hold the index pages 100,000 rows touch, so SQLite spills and reads them again; the
# cache is memory of this connection only, taken as pages are used.
SQLITE_BULK_CACHE_KIB = 256 * 1024


def db_datetime(value: datetime | None) -> Any:
    return None if value is None else connection.ops.adapt_datetimefield_value(value)


# One encoder for every row: json.dumps with separators builds a new encoder on each call.
_JSON = json.JSONEncoder(separators=(",", ":"))


def db_json(value: Any) -> str:
    return _JSON.encode(value)


def _quoted(model: type[Model], columns: Sequence[str]) -> tuple[str, str]:
    return prepared.table(model), ", ".join(prepared.quote(name) for name in columns)


def _sqlite_bulk_cache(cursor: Any) -> None:
    cursor.execute(f"PRAGMA cache_size = -{SQLITE_BULK_CACHE_KIB}")


def _copy_rows(cursor: Any, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> int:
    count = 0
    # Table and column names come from the model or the caller's code; every value is data in the stream.
    # COPY is psycopg's own call, past Django's cursor: its errors are made Django's here.
    with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


# Parameters of one multi-row INSERT on SQLite. Past a few thousand the statement's own parsing is
# already nothing beside its rows (4,000 to 32,000 measured the same); the build's limit may be lower.
SQLITE_PARAMS_PER_INSERT = 8000


# Made once per shape: a vend's one-row statements, and a bulk run's statements of thousands of rows.
@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, names: str, width: int, rows: int, placeholder: str = "%s") -> str:
    # Table and column names come from the model or the caller's code; every value is a parameter.
    values = "(" + ", ".join([placeholder] * width) + ")"
    return f"INSERT INTO {table} ({names}) VALUES {', '.join([values] * rows)}"  # noqa: S608


def _sqlite_insert_rows(cursor: Any, table: str, names: str, width: int, rows: Iterable[Sequence[Any]]) -> int:
    limit = min(SQLITE_PARAMS_PER_INSERT, connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    per_statement = max(1, limit // width)
    rows = iter(rows)
    count = 0
    while chunk := list(itertools.islice(rows, per_statement)):
        params = [value for row in chunk for value in row]
        if count + len(chunk) < BATCH:
            cursor.execute(_insert_sql(table, names, width, len(chunk)), params)
        else:
            if count < BATCH:  # a bulk write: only then is the larger page cache worth its memory
                _sqlite_bulk_cache(cursor)
            # Django's cursor turns each %s into ? with a regular expression over the statement's whole
            # text, on every call: over statements of thousands of parameters that took 0.7 s of a
            # 100,000-serial import. A bulk write's statements are written with ? and go to the sqlite3
            # connection itself, in the same transaction (its errors still become Django's).
            sql = _insert_sql(table, names, width, len(chunk), "?")
            with connection.wrap_database_errors:
                connection.connection.execute(sql, params)
        count += len(chunk)
    return count


# Fewer rows than this go in as INSERTs even on PostgreSQL: a vend's one audit event or outbox row gains
# nothing from COPY's stream, and an INSERT is what the query log (and its tests) show.
COPY_FROM_ROWS = 100


def insert_rows(model: type[Model], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert `rows` (one value per column, already database-ready) into the model's table."""
    table, names = _quoted(model, columns)
    sql = _insert_sql(table, names, len(columns), 1)
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            return _sqlite_insert_rows(cursor, table, names, len(columns), rows)
        rows = iter(rows)
        first = list(itertools.islice(rows, COPY_FROM_ROWS))
        if len(first) == 1:
            # psycopg's executemany runs in pipeline mode, whose extra round trips cost more than one row.
            cursor.execute(sql, first[0])
        elif first and len(first) < COPY_FROM_ROWS:
            cursor.executemany(sql, first)
        if len(first) < COPY_FROM_ROWS:
            return len(first)
        return _copy_rows(cursor, table, names, itertools.chain(first, rows))


@contextmanager
def rows_table(model: type[Model], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """A temporary table `bulk_rows` holding `rows`, its columns typed like the model's `columns`, the
    first column what it is joined on.

    For joining many values against a table in one statement (which serials exist, an UPDATE … FROM)
    instead of one query per chunk of 900. Dropped on leaving; call it inside a transaction.
    """
    table, names = _quoted(model, columns)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bulk_rows")
        cursor.execute(f"CREATE TEMPORARY TABLE bulk_rows AS SELECT {names} FROM {table} WHERE 1 = 0")  # noqa: S608
        if connection.vendor == "postgresql":
            _copy_rows(cursor, "bulk_rows", names, rows)
            cursor.execute("ANALYZE bulk_rows")  # so the planner joins 100,000 rows by hash, not by loop
        else:
            _sqlite_insert_rows(cursor, "bulk_rows", names, len(columns), rows)
            # SQLite joins by nested loops: without an index on the first column, a join against
            # 100,000 rows scans them once per row of the other table.
            first = connection.ops.quote_name(columns[0])
            cursor.execute(f"CREATE INDEX bulk_rows_key ON bulk_rows ({first})")
    try:
        yield "bulk_rows"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS bulk_rows")


def chunks(items: Sequence[Any], size: int = 900) -> Iterable[Sequence[Any]]:
    """SQLite caps the parameters of one query; 900 stays under every build's limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
