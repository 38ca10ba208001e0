"""Lean bulk INSERTs for the write path (docs/PERFORMANCE.md).

``QuerySet.bulk_create`` compiles SQL value by value, and on SQLite it splits 1000 facts into 25
statements (999 parameters each): that compilation cost more than SQLite's own work. Here one
parameterized statement runs with ``executemany``. Values go through each field's
``get_db_prep_save`` exactly as ``bulk_create`` would, except plain values of plain columns
(a ``str`` or None for a text column, a ``float`` for a float column ...), which the field
would pass through unchanged. Like ``bulk_create``: no ``save()``, no signals, objects marked as saved.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connections, models, router

# Column kinds whose get_db_prep_save returns a value of this exact type unchanged.
_PLAIN = {
    models.CharField: str,
    models.TextField: str,
    models.FloatField: float,
    models.BigIntegerField: int,
    models.IntegerField: int,
    models.BooleanField: bool,
}


def _plain_type(field: models.Field) -> type | None:
    # Exact classes only: a subclass may prepare values its own way.
    return _PLAIN.get(type(field))


def _columns(model: type[models.Model]) -> list[models.Field]:
    # What bulk_create inserts: every concrete column but an auto-generated primary key.
    return [f for f in model._meta.concrete_fields if not isinstance(f, models.AutoField)]


def _rows(objs: Sequence[models.Model], fields: list[models.Field], connection) -> list[list]:
    plan = [(f.attname, _plain_type(f), f) for f in fields]
    rows = []
    for obj in objs:
        row = []
        for attname, plain, field in plan:
            value = getattr(obj, attname)
            if plain is not None and (value is None or type(value) is plain):
                row.append(value)
            else:
                row.append(field.get_db_prep_save(field.pre_save(obj, True), connection))
        rows.append(row)
    return rows


def insert(objs: Sequence[models.Model], *, upsert_on: Sequence[str] = (), update: Sequence[str] = ()) -> None:
    """INSERT ``objs`` (all of one model); with ``upsert_on``, update ``update`` columns on conflict."""
    if not objs:
        return
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    qn = connection.ops.quote_name
    fields = _columns(model)
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        qn(model._meta.db_table), ", ".join(qn(f.column) for f in fields), ", ".join(["%s"] * len(fields))
    )
    if upsert_on:
        columns = {f.name: f.column for f in model._meta.concrete_fields}
        sql += " ON CONFLICT ({}) DO UPDATE SET {}".format(
            ", ".join(qn(columns[name]) for name in upsert_on),
            ", ".join(f"{qn(columns[name])} = EXCLUDED.{qn(columns[name])}" for name in update),
        )
    with connection.cursor() as cursor:
        cursor.executemany(sql, _rows(objs, fields, connection))
    for obj in objs:
        obj._state.adding = False
        obj._state.db = connection.alias
