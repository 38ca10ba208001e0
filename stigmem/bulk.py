"""Lean bulk INSERTs for the write path (docs/PERFORMANCE.md).

``QuerySet.bulk_create`` compiles SQL value by value, and on SQLite it splits 1000 facts into 25
statements (999 parameters each): that compilation cost more than SQLite's own work. Here one
parameterized statement runs with ``executemany``. Values go through each field's
``get_db_prep_save`` exactly as ``bulk_create`` would, except where the result is known without
the call: plain values of plain columns (a ``str`` or None for a text column, a ``float`` for a
float column ...) and None for the built-in column types, which pass through unchanged, and a
``uuid.UUID`` for a UUID column or a foreign key to one, which Django stores as the UUID itself
(PostgreSQL) or its hex string (other databases). Like ``bulk_create``: no ``save()``, no signals.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from django.db import connections, models, router

# Column kinds whose get_db_prep_save returns a value of this exact type unchanged.
_PLAIN = {
    models.CharField: str,
    models.TextField: str,
    models.FloatField: float,
    models.BigIntegerField: int,
    models.IntegerField: int,
    models.PositiveSmallIntegerField: int,
    models.BooleanField: bool,
}
# Built-in column kinds whose get_db_prep_save(None) is None (when they set no value on save).
_NONE_AS_IS = (*_PLAIN, models.DateTimeField, models.UUIDField, models.JSONField, models.ForeignKey)


def _is_uuid_column(field: models.Field) -> bool:
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    return type(target) is models.UUIDField


def _plan(fields: Sequence[models.Field], connection) -> list:
    """For each field: (attname, plain type or None, None passes?, uuid column?, field)."""
    plan = []
    for f in fields:
        # Exact classes only: a subclass may prepare values its own way.
        sets_on_save = getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
        none_as_is = type(f) in _NONE_AS_IS and not sets_on_save
        plan.append((f.attname, _PLAIN.get(type(f)), none_as_is, _is_uuid_column(f), f))
    return plan


def _prepare(rows: Iterable[Sequence], plan: list, connection) -> list[list]:
    native_uuid = connection.features.has_native_uuid_field
    prepared = []
    for values in rows:
        row = []
        for value, (_, plain, none_as_is, uuid_column, field) in zip(values, plan, strict=True):
            if value is None:
                row.append(None if none_as_is else field.get_db_prep_save(value, connection))
            elif plain is not None and type(value) is plain:
                row.append(value)
            elif uuid_column and type(value) is uuid.UUID:
                row.append(value if native_uuid else value.hex)
            else:
                row.append(field.get_db_prep_save(value, connection))
        prepared.append(row)
    return prepared


def _execute(
    model: type[models.Model], fields: Sequence[models.Field], rows: list[list], connection, upsert_on, update
):
    qn = connection.ops.quote_name
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
        cursor.executemany(sql, rows)


def insert(objs: Sequence[models.Model], *, upsert_on: Sequence[str] = (), update: Sequence[str] = ()) -> None:
    """INSERT ``objs`` (all of one model); with ``upsert_on``, update ``update`` columns on conflict."""
    if not objs:
        return
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    # What bulk_create inserts: every concrete column but an auto-generated primary key.
    fields = [f for f in model._meta.concrete_fields if not isinstance(f, models.AutoField)]
    plan = _plan(fields, connection)
    values = (
        [
            field.pre_save(obj, True) if not none_as_is else getattr(obj, attname)
            for attname, _, none_as_is, _, field in plan
        ]
        for obj in objs
    )
    _execute(model, fields, _prepare(values, plan, connection), connection, upsert_on, update)
    for obj in objs:
        obj._state.adding = False
        obj._state.db = connection.alias


def insert_values(
    model: type[models.Model],
    names: Sequence[str],
    rows: Sequence[Sequence],
    *,
    upsert_on: Sequence[str] = (),
    update: Sequence[str] = (),
) -> None:
    """INSERT plain value tuples for the fields ``names`` (a foreign key takes the related pk)."""
    if not rows:
        return
    connection = connections[router.db_for_write(model)]
    fields = [model._meta.get_field(name) for name in names]
    _execute(model, fields, _prepare(rows, _plan(fields, connection), connection), connection, upsert_on, update)
