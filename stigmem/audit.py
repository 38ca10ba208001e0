"""The audit log (WIRE.md §4.4): writing entries, reading them back, auth failures, retention.

``record(...)`` must be called inside the transaction of the action it records, so the entry
commits or rolls back with the action.

Failed authentications are the exception: they come from anyone, as fast as anyone can send
them, so each one only bumps an in-memory counter and the counts are written as one
``auth_failure`` row per (reason, client IP) per window (``AuthFailureCounter``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections
from django.utils import timezone

from stigmem.errors import InputInvalid, coded, field_error
from stigmem.limits import QUERY_LIMIT_DEFAULT
from stigmem.models import AuditEvent
from stigmem.queries import decode_cursor, encode_cursor, parse_limit
from stigmem.values import parse_iso_datetime, text_problem

logger = logging.getLogger(__name__)

CURSOR_SALT = "audit"
AUTH_FAILURE = "auth_failure"
# One row per (reason, IP) at most this often, whatever the failure rate.
AUTH_FAILURE_WINDOW_S = 60.0
# Distinct (reason, IP) pairs kept per window; beyond it failures are counted under IP "*", so
# an attack from many addresses costs bounded memory and at most this many rows per window.
MAX_AUTH_FAILURE_SOURCES = 1000
OVERFLOW_IP = "*"
PRUNE_CHUNK = 5000


def entry(
    tenant: str, event_type: str, *, actor: str = "", target: str = "", detail: dict[str, Any] | None = None
) -> AuditEvent:
    """An unsaved audit row (the write path inserts it with its own rows, see facts.py)."""
    return AuditEvent(
        tenant=tenant,
        event_type=event_type,
        actor=actor[:512],
        target=target[:512],
        detail=detail or {},
        created_at=timezone.now(),
    )


def record(
    tenant: str, event_type: str, *, actor: str = "", target: str = "", detail: dict[str, Any] | None = None
) -> AuditEvent:
    event = entry(tenant, event_type, actor=actor, target=target, detail=detail)
    event.save()
    return event


# --- reading: GET /v1/admin/audit --------------------------------------------------------------


@dataclass
class AuditQuery:
    since: datetime | None = None
    until: datetime | None = None
    event_type: str | None = None
    actor: str | None = None
    before_id: int | None = None
    limit: int = QUERY_LIMIT_DEFAULT


@dataclass
class AuditPage:
    events: list[AuditEvent]
    cursor: str | None


def parse_audit_query(params) -> AuditQuery:
    """Validate the query string: 422 for bad values, 400 ``cursor_invalid`` for a bad cursor."""
    errors: list = []
    query = AuditQuery()
    for name in ("since", "until"):
        raw = params.get(name)
        if not raw:
            continue
        try:
            moment = parse_iso_datetime(raw)
        except ValueError:
            errors.append(field_error(["query", name], f"{name} must be an ISO-8601 datetime", "datetime_parsing"))
            continue
        setattr(query, name, moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    for name, attr in (("event_type", "event_type"), ("principal", "actor")):
        raw = params.get(name)
        if not raw:
            continue
        if (problem := text_problem(raw)) is not None:  # PostgreSQL cannot even compare a string holding NUL
            errors.append(field_error(["query", name], f"{name} {problem}", "string_unicode"))
        else:
            setattr(query, attr, raw)
    query.limit = parse_limit(params, errors)
    if errors:
        raise InputInvalid(errors)
    if params.get("cursor"):
        position = decode_cursor(CURSOR_SALT, params["cursor"])
        last_id = position.get("i")
        if not isinstance(last_id, int) or isinstance(last_id, bool):
            raise coded(400, "cursor_invalid", "cursor is malformed or was not issued by this node")
        query.before_id = last_id
    return query


def list_audit(tenant: str, query: AuditQuery) -> AuditPage:
    """One page of the tenant's audit log, newest first, keyset-paged on the row id."""
    rows = AuditEvent.objects.filter(tenant=tenant)
    if query.event_type is not None:
        rows = rows.filter(event_type=query.event_type)
    if query.actor is not None:
        rows = rows.filter(actor=query.actor)
    if query.since is not None:
        rows = rows.filter(created_at__gte=query.since)
    if query.until is not None:
        rows = rows.filter(created_at__lte=query.until)
    if query.before_id is not None:
        rows = rows.filter(id__lt=query.before_id)
    page = list(rows.order_by("-id")[: query.limit + 1])
    cursor = None
    if len(page) > query.limit:
        page = page[: query.limit]
        cursor = encode_cursor(CURSOR_SALT, {"i": page[-1].id})
    return AuditPage(page, cursor)


def entry_record(event: AuditEvent) -> dict[str, Any]:
    created_at = event.created_at.isoformat()
    return {
        "id": event.id,
        "event_type": event.event_type,
        "actor": event.actor,
        "target": event.target,
        "detail": event.detail,
        "tenant_id": event.tenant,
        "created_at": created_at,
        # The reference node's names for the same values, so its clients read this log unchanged.
        "entity_uri": event.actor,
        "ts": created_at,
    }


# --- failed authentications ----------------------------------------------------------------------


@dataclass
class _Window:
    counts: dict[tuple[str, str], int]
    started_at: datetime


def _start_daemon_timer(delay_s: float, fire: Callable[[], None]) -> threading.Timer:
    def run() -> None:
        try:
            fire()
        finally:
            # The timer thread ends here; don't leave its database connection behind.
            connections.close_all()

    timer = threading.Timer(delay_s, run)
    timer.daemon = True
    timer.start()
    return timer


class AuthFailureCounter:
    """Counts failed authentications of this process and writes them once per window.

    The first failure of a window arms a timer that writes the window's counts when it ends, so
    counts are written even if the failures stop; a failure arriving after the window ended
    (the timer being late) writes them first. Counting is a lock and a dict increment.
    """

    def __init__(
        self,
        window_s: float = AUTH_FAILURE_WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        start_timer: Callable[[float, Callable[[], None]], threading.Timer] = _start_daemon_timer,
    ):
        self._window_s = window_s
        self._clock = clock
        self._start_timer = start_timer
        self._lock = threading.Lock()
        self._window: _Window | None = None
        self._opened_at = 0.0
        self._timer: threading.Timer | None = None

    def note(self, reason: str, ip: str) -> None:
        ended = None
        with self._lock:
            if self._window is not None and self._clock() - self._opened_at >= self._window_s:
                ended = self._take()
            if self._window is None:
                self._open(timezone.now())
            counts = self._window.counts
            key = (reason, ip)
            if key not in counts and len(counts) >= MAX_AUTH_FAILURE_SOURCES:
                key = (reason, OVERFLOW_IP)
            counts[key] = counts.get(key, 0) + 1
        if ended is not None:
            self._write(ended)

    def flush(self) -> int:
        """Write the counts of the open window now; returns the number of rows written."""
        with self._lock:
            window = self._take()
        return self._write(window) if window is not None else 0

    def reset(self) -> None:
        """Forget the counts and stop the timer (tests)."""
        with self._lock:
            self._take()

    def _open(self, started_at: datetime) -> None:
        window = self._window = _Window({}, started_at)
        self._opened_at = self._clock()
        self._timer = self._start_timer(self._window_s, lambda: self._fire(window))

    def _take(self) -> _Window | None:
        window, self._window = self._window, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return window

    def _fire(self, window: _Window) -> None:
        with self._lock:
            # A late timer must not cut short the window that replaced its own.
            ended = self._take() if self._window is window else None
        if ended is not None:
            self._write(ended)

    def _write(self, window: _Window) -> int:
        ended_at = timezone.now()
        rows = [
            AuditEvent(
                tenant=settings.STIGMEM_DEFAULT_TENANT,  # an unknown key has no tenant
                event_type=AUTH_FAILURE,
                actor=f"ip:{ip}",
                detail={
                    "count": count,
                    "reason": reason,
                    "ip": ip,
                    "window_start": window.started_at.isoformat(),
                    "window_end": ended_at.isoformat(),
                },
                created_at=ended_at,
            )
            for (reason, ip), count in sorted(window.counts.items())
        ]
        try:
            AuditEvent.objects.bulk_create(rows)
        except Exception:
            # Never turn a 401 into a 500; keep the counts for the next window instead.
            logger.exception("could not write %d auth_failure audit rows; retrying with the next window", len(rows))
            self._restore(window)
            return 0
        return len(rows)

    def _restore(self, window: _Window) -> None:
        with self._lock:
            if self._window is None:
                self._open(window.started_at)
            current = self._window
            current.started_at = min(current.started_at, window.started_at)
            for key, count in window.counts.items():
                current.counts[key] = current.counts.get(key, 0) + count


auth_failures = AuthFailureCounter()
# A web worker shutting down cleanly writes what it counted in its last window.
atexit.register(auth_failures.flush)


def flush_auth_failures() -> int:
    return auth_failures.flush()


# --- retention -----------------------------------------------------------------------------------


def prune_audit(
    *, days: int | None = None, chunk_size: int = PRUNE_CHUNK, progress: Callable[[int], None] | None = None
) -> int:
    """Delete rows older than ``days`` (default STIGMEM_AUDIT_RETENTION_DAYS; 0 keeps everything).

    Deletes in chunks, each its own statement, so a large backlog never holds one long
    transaction or lock. Returns the number of rows deleted; ``progress`` gets the running total.
    """
    days = settings.STIGMEM_AUDIT_RETENTION_DAYS if days is None else days
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(AuditEvent.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:chunk_size])
        if not ids:
            break
        deleted += AuditEvent.objects.filter(id__in=ids).delete()[0]
        if progress is not None:
            progress(deleted)
        if len(ids) < chunk_size:
            break
    return deleted
