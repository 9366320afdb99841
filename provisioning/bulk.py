"""Plain `executemany` inserts for the few places that write 100,000 rows at once.

The ORM's bulk_create spends most of its time building and preparing model instances (about 50 s for a
100,000-serial import); here the rows are tuples of values the database driver takes as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Model

BATCH = 5000


def db_datetime(value: datetime | None) -> Any:
    return None if value is None else connection.ops.adapt_datetimefield_value(value)


def db_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def insert_rows(model: type[Model], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert `rows` (one value per column, already database-ready) into the model's table."""
    quote = connection.ops.quote_name
    # Table and column names come from the model; every value is a parameter.
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(columns))})"
    )
    count = 0
    with connection.cursor() as cursor:
        batch: list[Sequence[Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                cursor.executemany(sql, batch)
                count += len(batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
            count += len(batch)
    return count


def chunks(items: Sequence[Any], size: int = 900) -> Iterable[Sequence[Any]]:
    """SQLite caps the parameters of one query; 900 stays under every build's limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
