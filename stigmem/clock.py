"""The node clock: one locked row that orders every write (DESIGN.md §3).

``clock_transaction()`` opens a transaction, locks ``NodeClock`` and hands out fact ``seq``s,
event ``seq``s and HLC timestamps. The lock is held until commit, so no transaction holding a
smaller ``seq`` can commit after one holding a bigger one: readers paging by ``seq`` never
skip a row. On SQLite the IMMEDIATE transaction mode already serializes writers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

from stigmem.hlc import Hlc, merge, tick
from stigmem.models import NodeClock

_local = threading.local()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ClockLease:
    """The clock, held for the current transaction."""

    def __init__(self, row: NodeClock):
        self._row = row
        self._hlc = Hlc(row.hlc_wall_ms, row.hlc_counter)
        self._dirty = False

    def next_fact_seq(self) -> int:
        self._row.last_fact_seq += 1
        self._dirty = True
        return self._row.last_fact_seq

    def next_event_seq(self) -> int:
        self._row.last_event_seq += 1
        self._dirty = True
        return self._row.last_event_seq

    def reserve_event_seqs(self, count: int) -> int:
        """Hand out ``count`` consecutive event seqs at once (set-based inserts); returns the first."""
        first = self._row.last_event_seq + 1
        self._row.last_event_seq += count
        self._dirty = True
        return first

    def tick(self) -> Hlc:
        self._hlc = tick(self._hlc, now_ms())
        self._dirty = True
        return self._hlc

    def merge(self, remote: Hlc) -> Hlc:
        """The timestamp of receiving a fact stamped ``remote`` by a peer (WIRE.md §2.6)."""
        self._hlc = merge(self._hlc, remote, now_ms())
        self._dirty = True
        return self._hlc

    def flush(self) -> None:
        if not self._dirty:
            return  # nothing was handed out (e.g. an idempotent re-assert)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {_TABLE} SET last_fact_seq = %s, last_event_seq = %s, hlc_wall_ms = %s, hlc_counter = %s"
                " WHERE id = %s",
                [self._row.last_fact_seq, self._row.last_event_seq, self._hlc.wall_ms, self._hlc.counter, self._row.pk],
            )


# Every write runs these two statements while holding the clock: as raw SQL they cost a fraction
# of the equivalent querysets' compilation (docs/PERFORMANCE.md).
_TABLE = NodeClock._meta.db_table


def _lock_row() -> NodeClock:
    sql = f"SELECT * FROM {_TABLE} WHERE id = 1"
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    row = next(iter(NodeClock.objects.raw(sql)), None)
    if row is None:
        raise NodeClock.DoesNotExist("NodeClock matching query does not exist.")
    return row


@contextmanager
def clock_transaction() -> Iterator[ClockLease]:
    """A transaction holding the node clock; nested calls share the outer lease."""
    outer: ClockLease | None = getattr(_local, "lease", None)
    if outer is not None:
        yield outer
        return
    with transaction.atomic():
        row = _lock_row()
        lease = ClockLease(row)
        _local.lease = lease
        try:
            yield lease
            lease.flush()
        finally:
            _local.lease = None
