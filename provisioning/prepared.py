"""Hand-written statements for the vend's hot path, and model instances made from their rows.

On a vend the ORM spent several times longer building, compiling and instantiating its queries than
the database spent running them (about 0.3 ms per query against 0.05 ms of SQL on SQLite). The few
statements every vend runs are therefore text made once per process: table and column names come from
the models' meta, every value is a parameter, and a row becomes a model instance through the same
converters the ORM applies (dates on SQLite, UUIDs, JSON), so callers get the objects they always did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Field, Model

Converter = Callable[[Any, Any, Any], Any]


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


def table(model: type[Model]) -> str:
    """The model's table, quoted for the current database."""
    return quote(model._meta.db_table)


def column(model: type[Model], field_name: str) -> str:
    """A field's column, quoted for the current database."""
    return quote(model._meta.get_field(field_name).column)  # type: ignore[union-attr]


def field_converters(field: Field, alias: str) -> tuple[Any, tuple[Converter, ...]]:
    """What the ORM would apply to this field's value as the database returns it: the backend's
    converters, then the field's own `from_db_value`. Returns the expression they expect and them."""
    return _field_converters(field, alias, connection.vendor)


@functools.cache
def _field_converters(field: Field, alias: str, vendor: str) -> tuple[Any, tuple[Converter, ...]]:
    expression = field.get_col(alias)
    return expression, (*connection.ops.get_db_converters(expression), *field.get_db_converters(connection))


def convert(value: Any, expression: Any, converters: tuple[Converter, ...]) -> Any:
    for converter in converters:
        value = converter(value, expression, connection)
    return value


@dataclass(frozen=True)
class Selection:
    """Every concrete column of a model under one alias, in the order `Model.from_db` takes them."""

    model: type[Model]
    sql: str  # "alias"."column", … for a SELECT list; unqualified for a RETURNING list
    attnames: tuple[str, ...]
    # (position, expression, converters) of the columns whose values need converting.
    conversions: tuple[tuple[int, Any, tuple[Converter, ...]], ...]
    db: str  # the connection's alias, as model instances record it

    @property
    def width(self) -> int:
        return len(self.attnames)

    def instance(self, values: Sequence[Any]) -> Any:
        """The model instance of one row's values (exactly `width` of them), or None for a LEFT JOIN's
        missing row (its primary key is NULL)."""
        if values[0] is None:
            return None
        converted = list(values)
        for position, expression, converters in self.conversions:
            value = converted[position]
            for converter in converters:
                value = converter(value, expression, connection)
            converted[position] = value
        return self.model.from_db(self.db, self.attnames, converted)


@functools.cache
def _selection(model: type[Model], alias: str | None, vendor: str, db: str) -> Selection:
    fields = model._meta.concrete_fields
    prefix = f"{quote(alias)}." if alias else ""
    conversions = []
    for position, field in enumerate(fields):
        expression, converters = _field_converters(field, alias or model._meta.db_table, vendor)
        if converters:
            conversions.append((position, expression, converters))
    return Selection(
        model=model,
        sql=", ".join(f"{prefix}{quote(field.column)}" for field in fields),
        attnames=tuple(field.attname for field in fields),
        conversions=tuple(conversions),
        db=db,
    )


def selection(model: type[Model], alias: str | None = None) -> Selection:
    """The model's columns under `alias` (None: unqualified, as an UPDATE's RETURNING names them).

    The primary key comes first: `Selection.instance` reads a NULL one as "no row"."""
    assert model._meta.concrete_fields[0].primary_key
    return _selection(model, alias, connection.vendor, connection.alias)


@functools.cache
def _insert_sql(model: type[Model], vendor: str) -> tuple[str, tuple[Field, ...]]:
    fields = tuple(field for field in model._meta.concrete_fields if not field.primary_key)
    pk = quote(model._meta.pk.column)  # type: ignore[union-attr]
    # Names from the model's meta; every value is a parameter.
    sql = (
        f"INSERT INTO {table(model)} ({', '.join(quote(field.column) for field in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {pk}"
    )
    return sql, fields


def insert(instance: Model) -> Model:
    """Save a new instance with one INSERT … RETURNING its primary key, as `Model.objects.create` would
    (field defaults and `pre_save` applied; no signals: the portal registers none for these models)."""
    sql, fields = _insert_sql(type(instance), connection.vendor)
    params = [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        (instance.pk,) = cursor.fetchone()
    instance._state.adding = False
    instance._state.db = connection.alias
    return instance
