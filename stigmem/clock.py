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


# --- bulk work and the writers behind it ----------------------------------------------------------

_TUPLE_LOCK_WAITERS = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'tuple' AND relation = %s::regclass"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)
_YIELD_POLL_S = 0.001


def writers_waiting() -> bool:
    """Whether another transaction is waiting for the node clock (or, on SQLite, the writer lock).

    Bulk work holding the clock (a decay sweep's chunk) asks between its steps and commits early
    when someone waits. PostgreSQL: a transaction blocked on the clock row holds (or queues for)
    a lock on that tuple until it gets the row, so such a lock exists exactly while someone waits.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_TUPLE_LOCK_WAITERS, [_TABLE])
            return bool(cursor.fetchone()[0])
    writers_queued = getattr(connection, "writers_queued", None)  # the node's SQLite backend
    return writers_queued is not None and writers_queued()


@contextmanager
def background_writes() -> Iterator[None]:
    """Writes that bulk work need not make room for (a log consumer's batch, a kick's enqueue).

    On SQLite such a writer waits for the writer lock without joining the queue a decay sweep
    watches, so the sweep does not end a chunk early for it; it gets the lock between chunks.
    Without this, the dispatch of a sweep's own ``fact.expired`` events cut most of its chunks
    short (docs/PERFORMANCE.md). On PostgreSQL only writers blocked on the node clock count as
    waiting; a consumer's batch takes the clock only to write facts or events.
    """
    if not hasattr(connection, "joins_writer_queue"):
        yield
        return
    previous = connection.joins_writer_queue
    connection.joins_writer_queue = False
    try:
        yield
    finally:
        connection.joins_writer_queue = previous


def let_waiting_writers_go(max_wait_s: float) -> None:
    """Between two transactions of bulk work: wait until the writers queued meanwhile had their turn.

    Without it the bulk work, ready again a moment after its commit, can take the lock back before
    them. Bounded: a steady stream of writers slows bulk work but cannot stop it.
    """
    yield_to_queued_writers = getattr(connection, "yield_to_queued_writers", None)
    if yield_to_queued_writers is not None:  # SQLite: the backend watches its queue file
        yield_to_queued_writers(max_wait_s)
        return
    deadline = time.monotonic() + max_wait_s
    while writers_waiting() and time.monotonic() < deadline:
        time.sleep(_YIELD_POLL_S)
