"""Consumers that tail the fact log and the Event log with durable cursors (DESIGN.md §3).

An app registers a consumer in its ``AppConfig.ready()``::

    logtail.register("dispatch", ConsumerCursor.Log.FACTS, handle_facts)

``handle_facts(rows)`` runs inside the transaction that advances the consumer's cursor past
``rows``, so whatever it writes commits together with the new position: a crash loses or
repeats nothing. A consumer with costly pure work per batch (the TTP engine's evaluation) gives
a ``prepare(rows)`` that runs before that transaction; the handler then gets what it returned.
A consumer that acts on few of the log's rows gives ``wanted()``, a filter on the log: the rows
outside it are passed over without being loaded (a decay sweep's 500,000 ``fact.expired`` events
on a tenant with no topic subscription cost one query, not a thousand batches).

Writers call ``kick_on_commit()``; after commit one django-q2 task runs the consumers (kicks are
coalesced), and the scheduled sweep is the safety net.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Q

from stigmem.clock import background_writes
from stigmem.models import ConsumerCursor, Event, Fact

logger = logging.getLogger(__name__)

Rows = Sequence[Fact] | Sequence[Event]
Handler = Callable[[Any], None]
KICK_TASK = "stigmem.logtail.run_consumers"
# A burst of commits produces one kick at its start and one after it (leading + trailing edge).
KICK_WINDOW_S = 0.2


@dataclass(frozen=True)
class Consumer:
    name: str
    log: str
    handler: Handler
    batch_size: int = 500
    # The columns the handler reads from every row (None: all). Loading only those makes a batch
    # that concerns nobody cheap; the handler fetches the rest for the rows it acts on.
    only: tuple[str, ...] | None = None
    # Work on the batch done before the write transaction (on SQLite it holds the one writer lock);
    # the handler receives its result instead of the rows.
    prepare: Callable[[Rows], Any] | None = None
    # The rows the handler acts on, as a filter on the log, evaluated once per batch; the others
    # are skipped and the cursor moves past them. None: every row.
    wanted: Callable[[], Q] | None = None


_consumers: dict[tuple[str, str], Consumer] = {}


def register(
    name: str,
    log: str,
    handler: Handler,
    batch_size: int = 500,
    only: tuple[str, ...] | None = None,
    prepare: Callable[[Rows], Any] | None = None,
    wanted: Callable[[], Q] | None = None,
) -> None:
    if log not in ConsumerCursor.Log.values:
        raise ValueError(f"unknown log {log!r}")
    _consumers[(name, log)] = Consumer(name, log, handler, batch_size, only, prepare, wanted)


def unregister(name: str, log: str) -> None:
    _consumers.pop((name, log), None)


def consumers() -> list[Consumer]:
    return list(_consumers.values())


def _claim_cursor(consumer: Consumer) -> ConsumerCursor | None:
    """Lock this consumer's cursor for the current transaction, or None if another worker has it."""
    ConsumerCursor.objects.get_or_create(consumer=consumer.name, log=consumer.log)
    query = ConsumerCursor.objects.filter(consumer=consumer.name, log=consumer.log)
    if connection.features.has_select_for_update_skip_locked:
        return query.select_for_update(skip_locked=True).first()
    # SQLite: the IMMEDIATE transaction already holds the database's write lock.
    return query.first()


def run_batch(consumer: Consumer) -> int:
    """Hand the next batch after the cursor to the consumer; returns how many rows it got."""
    model = Fact if consumer.log == ConsumerCursor.Log.FACTS else Event
    # The batch is read before the write transaction: on SQLite that transaction holds the one
    # writer lock, and loading 500 rows inside it made every writer behind a busy consumer wait.
    position = (
        ConsumerCursor.objects.filter(consumer=consumer.name, log=consumer.log)
        .values_list("position", flat=True)
        .first()
    ) or 0
    rows = model.objects.filter(seq__gt=position).order_by("seq")
    horizon = None
    if consumer.wanted is not None:
        # The log's end now: seq follows commit order, so every row up to it is visible and none
        # can commit below it later; the cursor may pass unwanted rows up to there.
        horizon = model.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
        if horizon <= position:
            return 0
        rows = rows.filter(consumer.wanted(), seq__lte=horizon)
    if consumer.only is not None:
        rows = rows.only(*consumer.only)
    rows = list(rows[: consumer.batch_size])
    if len(rows) == consumer.batch_size or horizon is None:
        if not rows:
            return 0
        reached = rows[-1].seq
    else:
        reached = horizon  # no wanted row between the batch's last and the log's end
    work = (consumer.prepare(rows) if consumer.prepare is not None else rows) if rows else None
    with background_writes(), transaction.atomic():
        cursor = _claim_cursor(consumer)
        # Another worker handled (part of) this batch meanwhile: it is not ours to hand over again.
        if cursor is None or cursor.position != position:
            return 0
        if rows:
            consumer.handler(work)
        cursor.position = reached
        cursor.save(update_fields=["position", "updated_at"])
        return len(rows)


def run_consumers(budget_s: float = 10.0) -> int:
    """Run every registered consumer until caught up or the time budget is spent."""
    deadline = time.monotonic() + budget_s
    total = 0
    for consumer in consumers():
        while time.monotonic() < deadline:
            try:
                handled = run_batch(consumer)
            except Exception:
                logger.exception("consumer %s on %s failed; it retries from its cursor", consumer.name, consumer.log)
                break
            total += handled
            if handled < consumer.batch_size:
                break
    return total


class _KickThrottle:
    """Leading- and trailing-edge coalescing of kicks; ``enqueue`` defaults to the log consumers' task."""

    def __init__(self, enqueue: Callable[[], None] | None = None) -> None:
        self._enqueue = enqueue
        self._lock = threading.Lock()
        self._last = 0.0
        self._trailing: threading.Timer | None = None

    def kick(self) -> None:
        if self._enqueue is None and not _consumers:
            return
        with self._lock:
            wait = self._last + KICK_WINDOW_S - time.monotonic()
            if wait <= 0:
                self._last = time.monotonic()
                fire_now = True
            else:
                fire_now = False
                if self._trailing is None:
                    self._trailing = threading.Timer(wait, self._fire_trailing)
                    self._trailing.daemon = True
                    self._trailing.start()
        if fire_now:
            # Not in the caller's thread: with the ORM broker the enqueue is a write transaction,
            # and a request would wait for the writer lock a second time (behind a decay sweep's
            # chunk, say) after its own commit.
            threading.Thread(target=self._fire, name="logtail-kick", daemon=True).start()

    def _fire_trailing(self) -> None:
        with self._lock:
            self._trailing = None
            self._last = time.monotonic()
        self._fire()

    def _fire(self) -> None:
        try:
            with background_writes():  # with the ORM broker the enqueue is a write; nobody waits for it
                (self._enqueue or _enqueue)()
        finally:
            # This thread is about to end; don't leave its database connection behind.
            connections.close_all()


def _enqueue() -> None:
    # Imported here: django_q.tasks needs the app registry, which is not ready at import time.
    from django_q.tasks import async_task

    try:
        # save=False: a kick that succeeded is not worth a result row. Saving one is a write
        # transaction that also locks and loads every saved result to prune them (django-q2's
        # save_limit), several milliseconds of the writer lock per kick. Failures are still saved.
        async_task(KICK_TASK, group="logtail", save=False, sync=settings.Q_CLUSTER.get("sync", False))
    except Exception:  # the broker being down must never fail a write; the sweep catches up
        logger.exception("could not enqueue the log consumers; the scheduled sweep will run them")


_throttle = _KickThrottle()


def kick_on_commit() -> None:
    """Run the consumers soon after the current transaction commits."""
    transaction.on_commit(_throttle.kick)
