"""The decay sweep (WIRE.md §7): expire a tenant's facts by TTL and confidence floor, set-based.

The tenant's facts are walked in ``seq`` order, ``STIGMEM_DECAY_CHUNK`` facts at a time. Each chunk
is one short transaction holding the node clock: an UPDATE marks the chunk's candidates expired
(which also ends them as current values: a head whose fact is expired is none, see ``FactHead``),
an INSERT ... SELECT writes one ``fact.expired`` Event per fact they expired, and (for a Job) the
position reached commits with them. Writers queue
on the clock for one chunk at most, never for the whole sweep; a crash loses no more than the
chunk in flight, and the rerun of the Job starts after the last chunk that committed.

Candidates are chosen by SQL predicates, never by a Python loop over facts:

- TTL: ``valid_until IS NULL AND timestamp < now - ttl`` (ttl 0: every such fact);
- floor: a current fact (it has a head) with ``0 < effective confidence < floor``. Under a
  half-life ``h``, ``c x 0.5^(age/h) < floor`` holds exactly when ``timestamp < now - h x
  log2(c/floor)``; the chunk's distinct confidences are few, so each gets its cutoff computed
  here and the predicate compares timestamps only (no math functions needed in SQLite);
- precedence: a policy governs the facts it matches that no more specific policy matches
  (``decay.policies.precedence``), so each fact follows exactly one policy, as on reads.

One sweep per tenant at a time: ``SweepLock`` is a lease row taken before the first chunk and
renewed in every chunk's transaction. A second sweep gets ``SweepBusy`` at once; a lease left by
a crashed process expires after ``STIGMEM_DECAY_LOCK_S`` seconds and can then be taken over.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, IntegrityError, connection, connections, transaction
from django.utils import timezone

from decay.models import DecayPolicy, SweepLock
from decay.policies import load_enabled, precedence
from stigmem import audit, logtail
from stigmem.clock import clock_transaction, let_waiting_writers_go, writers_waiting
from stigmem.events import FACT_EXPIRED
from stigmem.models import Event, Fact, FactHead, Job

logger = logging.getLogger(__name__)

AUDIT_EVENT = "decay_sweep"
# More distinct confidences than this in a chunk (rare: most writers use a handful of values)
# and the chunk is halved, so the cutoff CASE of a half-life floor stays small.
MAX_DISTINCT_CONFIDENCES = 500

_FACT = Fact._meta.db_table
_HEAD = FactHead._meta.db_table
_EVENT = Event._meta.db_table


class SweepBusy(Exception):
    """Another sweep of the same tenant holds the tenant's sweep lock."""


@dataclass(frozen=True)
class SweepRequest:
    tenant: str
    scope: str | None = None
    ttl_seconds: int | None = None
    min_confidence: float | None = None
    dry_run: bool = False

    @property
    def explicit(self) -> bool:
        return self.ttl_seconds is not None or self.min_confidence is not None


@dataclass
class SweepResult:
    scanned: int
    decayed: int
    dry_run: bool


def lock_lease_s() -> int:
    return settings.STIGMEM_DECAY_LOCK_S


def chunk_size() -> int:
    return max(1, int(settings.STIGMEM_DECAY_CHUNK))


def chunk_budget_s() -> float:
    return settings.STIGMEM_DECAY_CHUNK_MS / 1000


class _Sizer:
    """How many seqs the next step spans: at most STIGMEM_DECAY_CHUNK, and as many as fit its time.

    A chunk transaction holds the node clock and runs steps (one UPDATE and one INSERT ... SELECT
    each) until ``STIGMEM_DECAY_CHUNK_MS`` is spent, or a writer queues behind it: a step lasts
    about a quarter of the budget, so a queued writer waits about that long, not a whole chunk.
    Steps with much to expire cost far more per fact than steps with nothing to expire, so the
    size follows the measured time per step instead of being fixed.
    """

    FLOOR = 500
    STEPS_PER_CHUNK = 4

    def __init__(self) -> None:
        self.largest = chunk_size()
        self.smallest = min(self.FLOOR, self.largest)
        self.size = self.largest if self.largest <= self.FLOOR else max(self.smallest, self.largest // 16)

    def observe(self, seconds: float) -> None:
        target = chunk_budget_s() / self.STEPS_PER_CHUNK
        if target <= 0:
            self.size = self.largest
            return
        # Damped: at most x2 up or /4 down per step, so one slow statement does not collapse the size.
        wanted = self.size * target / max(seconds, 1e-4)
        wanted = min(self.size * 2, max(self.size / 4, wanted))
        self.size = int(min(self.largest, max(self.smallest, wanted)))


# --- SQL predicates ------------------------------------------------------------------------------


@dataclass
class _Sql:
    """A SQL boolean expression over the fact alias ``f`` with its parameters."""

    text: str
    params: list = field(default_factory=list)

    @staticmethod
    def any_of(parts: Sequence[_Sql]) -> _Sql:
        parts = [p for p in parts if p.text != "1=0"]
        if not parts:
            return _FALSE
        return _Sql("(" + " OR ".join(p.text for p in parts) + ")", [x for p in parts for x in p.params])

    @staticmethod
    def all_of(parts: Sequence[_Sql]) -> _Sql:
        if any(p.text == "1=0" for p in parts):
            return _FALSE
        parts = [p for p in parts if p.text != "1=1"]
        if not parts:
            return _TRUE
        return _Sql("(" + " AND ".join(p.text for p in parts) + ")", [x for p in parts for x in p.params])

    def negated(self) -> _Sql:
        if self.text == "1=0":
            return _TRUE
        if self.text == "1=1":
            return _FALSE
        return _Sql(f"NOT {self.text}", list(self.params))


_TRUE = _Sql("1=1")
_FALSE = _Sql("1=0")


def _db_time(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def _before(now: datetime, seconds: float) -> datetime | None:
    """``now - seconds``, or None when that is before any representable time (nothing is older)."""
    try:
        return now - timedelta(seconds=seconds)
    except OverflowError:
        return None


def _matches(policy: DecayPolicy) -> _Sql:
    parts = []
    if policy.relation_prefix:
        # substr, not LIKE: LIKE is case-insensitive on SQLite and treats % and _ as wildcards.
        parts.append(_Sql("substr(f.relation, 1, %s) = %s", [len(policy.relation_prefix), policy.relation_prefix]))
    if policy.scope:
        parts.append(_Sql("f.scope = %s", [policy.scope]))
    return _Sql.all_of(parts)


def _governed(policies: Sequence[DecayPolicy], index: int) -> _Sql:
    """Facts that ``policies[index]`` governs: it matches them and no more specific policy does."""
    earlier = _Sql.any_of([_matches(p) for p in policies[:index]])
    return _Sql.all_of([_matches(policies[index]), earlier.negated()])


def _ttl(ttl_seconds: int, now: datetime) -> _Sql:
    if ttl_seconds == 0:
        return _Sql("f.valid_until IS NULL")
    cutoff = _before(now, ttl_seconds)
    if cutoff is None:
        return _FALSE
    return _Sql("(f.valid_until IS NULL AND f.timestamp < %s)", [_db_time(cutoff)])


_CURRENT = f"EXISTS (SELECT 1 FROM {_HEAD} h WHERE h.fact_id = f.id)"


def _floor(floor: float, half_life_s: int | None, now: datetime, confidences: Sequence[float]) -> _Sql:
    """Current facts with 0 < effective confidence < floor."""
    if floor <= 0:
        return _FALSE
    below = _Sql("f.confidence < %s", [floor])
    if half_life_s:
        # c < floor is below at any age; c >= floor falls below once older than h x log2(c/floor).
        branches: list = []
        for c in confidences:
            if c >= floor:
                cutoff = _before(now, half_life_s * math.log2(c / floor))
                if cutoff is not None:
                    branches += [c, _db_time(cutoff)]
        if branches:
            whens = " ".join(["WHEN %s THEN %s"] * (len(branches) // 2))
            below = _Sql(f"(f.confidence < %s OR f.timestamp < CASE f.confidence {whens} END)", [floor, *branches])
    return _Sql.all_of([_Sql("f.confidence > 0"), below, _Sql(_CURRENT)])


@dataclass
class _Plan:
    """What a sweep expires: candidate and TTL-reason predicates, built per chunk."""

    request: SweepRequest
    policies: list[DecayPolicy]
    now: datetime
    only: DecayPolicy | None = None  # preview: the facts this policy governs

    @property
    def needs_confidences(self) -> bool:
        if self.request.explicit:
            return self.request.min_confidence is not None and any(p.half_life_seconds for p in self.policies)
        return any(p.half_life_seconds and p.min_confidence is not None for p in self.policies)

    @property
    def empty(self) -> bool:
        if self.request.explicit:
            return False
        return not any(p.ttl_seconds is not None or p.min_confidence is not None for p in self._policy_rules())

    def _policy_rules(self) -> list[DecayPolicy]:
        return [self.only] if self.only is not None else self.policies

    def predicates(self, confidences: Sequence[float]) -> tuple[_Sql, _Sql]:
        """(candidate, expired-by-TTL) for a chunk with these distinct confidences."""
        request, now, policies = self.request, self.now, self.policies
        if request.explicit:
            ttl = _ttl(request.ttl_seconds, now) if request.ttl_seconds is not None else _FALSE
            floor = _FALSE
            if request.min_confidence is not None:
                # A half-life policy governing a fact still defines its effective confidence.
                decaying = [i for i, p in enumerate(policies) if p.half_life_seconds]
                governed = [_governed(policies, i) for i in decaying]
                floor = _Sql.any_of(
                    [
                        *(
                            _Sql.all_of(
                                [g, _floor(request.min_confidence, policies[i].half_life_seconds, now, confidences)]
                            )
                            for g, i in zip(governed, decaying, strict=True)
                        ),
                        _Sql.all_of(
                            [_Sql.any_of(governed).negated(), _floor(request.min_confidence, None, now, confidences)]
                        ),
                    ]
                )
            return _Sql.any_of([ttl, floor]), ttl
        candidates, ttls = [], []
        for i, policy in enumerate(policies):
            if self.only is not None and policy.pk != self.only.pk:
                continue
            governed = _governed(policies, i)
            ttl = _ttl(policy.ttl_seconds, now) if policy.ttl_seconds is not None else _FALSE
            floor = (
                _floor(policy.min_confidence, policy.half_life_seconds, now, confidences)
                if policy.min_confidence is not None
                else _FALSE
            )
            candidates.append(_Sql.all_of([governed, _Sql.any_of([ttl, floor])]))
            ttls.append(_Sql.all_of([governed, ttl]))
        return _Sql.any_of(candidates), _Sql.any_of(ttls)


# --- chunks --------------------------------------------------------------------------------------


def _scalar(sql: str, params: list):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


def _range(request: SweepRequest, lo: int, hi: int) -> _Sql:
    sql = _Sql("f.tenant = %s AND f.seq > %s AND f.seq <= %s AND f.expired_at IS NULL", [request.tenant, lo, hi])
    if request.scope is not None:
        sql = _Sql(sql.text + " AND f.scope = %s", [*sql.params, request.scope])
    return sql


def _distinct_confidences(request: SweepRequest, lo: int, hi: int) -> list[float]:
    where = _range(request, lo, hi)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT f.confidence FROM {_FACT} f WHERE {where.text} AND f.confidence > 0 "
            f"LIMIT {MAX_DISTINCT_CONFIDENCES + 1}",
            where.params,
        )
        return [row[0] for row in cursor.fetchall()]


def _chunks(plan: _Plan, start: int, last: int, sizer: _Sizer | None = None):
    """(lo, hi, distinct confidences) of each step over the tenant's facts with start < seq <= last.

    A step spans a range of ``seq`` (the sizer's size, or STIGMEM_DECAY_CHUNK): ``seq`` is dense on
    a node with one tenant, so that many facts; fewer where other tenants' facts sit in between.
    Ranges, not "the next N facts": finding the N-th fact is an OFFSET scan, which PostgreSQL
    planned as a full sort of the tenant's remaining facts whenever its statistics were stale.
    """
    request = plan.request
    lo = start
    while lo < last:
        span = sizer.size if sizer is not None else chunk_size()
        while True:
            hi = min(last, lo + span)
            confidences = _distinct_confidences(request, lo, hi) if plan.needs_confidences else []
            if len(confidences) <= MAX_DISTINCT_CONFIDENCES or span == 1:
                break
            span //= 2
        yield lo, hi, confidences
        lo = hi


def _reason(candidate: _Sql, ttl: _Sql) -> _Sql:
    """The payload's ``reason`` of an expired candidate: 'ttl' when the TTL rule holds for it."""
    # A sweep by one rule only (the common cron sweep) needs no per-row test.
    if ttl.text == "1=0":
        return _Sql("'confidence'")
    if (ttl.text, ttl.params) == (candidate.text, candidate.params):
        return _Sql("'ttl'")
    return _Sql(f"CASE WHEN {ttl.text} THEN 'ttl' ELSE 'confidence' END", list(ttl.params))


def _json_payload(reason: _Sql) -> _Sql:
    if connection.vendor == "postgresql":
        fact_id = "f.id::text"
        build = "jsonb_build_object"
    else:
        # SQLite keeps UUIDs as 32 hex digits; the payload carries the canonical form.
        fact_id = (
            "substr(f.id, 1, 8) || '-' || substr(f.id, 9, 4) || '-' || substr(f.id, 13, 4) || '-' "
            "|| substr(f.id, 17, 4) || '-' || substr(f.id, 21, 12)"
        )
        build = "json_object"
    return _Sql(
        f"{build}('fact_id', {fact_id}, 'entity', f.entity, 'relation', f.relation, 'scope', f.scope, "
        f"'reason', {reason.text})",
        list(reason.params),
    )


def _expire_chunk(request: SweepRequest, plan: _Plan, lo: int, hi: int, confidences, marker: tuple) -> tuple[int, _Sql]:
    """Mark the chunk's candidates expired (inside its clock transaction): (how many, their reason)."""
    candidate, ttl = plan.predicates(confidences)
    reason = _reason(candidate, ttl)
    if candidate.text == "1=0":
        return 0, reason
    where = _range(request, lo, hi)
    expired_at, expired_by = marker
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_FACT} AS f SET expired_at = %s, expired_by = %s WHERE {where.text} AND {candidate.text}",
            [expired_at, expired_by, *where.params, *candidate.params],
        )
        expired = cursor.rowcount
    return expired, reason


def _record_chunk(request: SweepRequest, lease, lo: int, hi: int, expired: int, reason: _Sql, marker) -> None:
    """The ``fact.expired`` events of the ``expired`` facts the chunk's UPDATE just marked."""
    # The UPDATE's rows, found again by their marker: the sweep's time and name in this seq range.
    mine = _Sql(
        "f.tenant = %s AND f.seq > %s AND f.seq <= %s AND f.expired_at = %s AND f.expired_by = %s",
        [request.tenant, lo, hi, *marker],
    )
    # The clock is held, so these seqs are consecutive: the SELECT numbers its rows after the first.
    first = lease.reserve_event_seqs(expired)
    if expired == hi - lo:
        # Every seq of the step expired (an old stretch of the log under a TTL): the facts' seqs
        # number the events densely already, without a window over the rows (a third of the
        # INSERT's time on SQLite).
        numbering = _Sql("%s + f.seq", [first - lo - 1])
    else:
        numbering = _Sql("%s + ROW_NUMBER() OVER (ORDER BY f.seq) - 1", [first])
    payload = _json_payload(reason)
    # SQLite checks the payload column's JSON_VALID constraint by parsing every payload again
    # (a fifth of the INSERT's time); json_object() cannot make invalid JSON, so the check is
    # skipped for this statement only.
    skip_check = connection.vendor == "sqlite"
    with connection.cursor() as cursor:
        if skip_check:
            cursor.execute("PRAGMA ignore_check_constraints = ON")
        try:
            cursor.execute(
                f"INSERT INTO {_EVENT} (seq, tenant, topic, payload, created_at) "
                f"SELECT {numbering.text}, f.tenant, %s, {payload.text}, %s FROM {_FACT} f WHERE {mine.text}",
                [*numbering.params, FACT_EXPIRED, *payload.params, marker[0], *mine.params],
            )
        finally:
            if skip_check:
                cursor.execute("PRAGMA ignore_check_constraints = OFF")


class _Checkpointer:
    """On SQLite in WAL mode: checkpoint the WAL after each chunk, off the chunk's transaction.

    A chunk writes a thousand pages or more to the WAL. The sweep's connection leaves the
    backend's checkpoints after commit to a thread with a connection of its own, which runs a
    PASSIVE checkpoint (it never blocks writers) after each chunk while the sweep goes on with
    the next one: copying and syncing pages overlaps the next chunk's SQL instead of adding to
    the sweep's time. Nothing to do on PostgreSQL, or inside a caller's transaction.
    """

    def __init__(self) -> None:
        self.active = connection.vendor == "sqlite" and not connection.in_atomic_block
        self.previous = False
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Checkpointer:
        if self.active:
            self.previous = getattr(connection, "checkpoints_elsewhere", False)
            connection.checkpoints_elsewhere = True
            self._thread = threading.Thread(target=self._run, name="decay-checkpoint", daemon=True)
            self._thread.start()
        return self

    def after_chunk(self) -> None:
        if self.active:
            self._due.set()

    def _run(self) -> None:
        # Django hands this thread its own connection to the same database.
        try:
            while True:
                self._due.wait()
                self._due.clear()
                # Read before checkpointing: a stop that arrives meanwhile sets ``_due`` again,
                # so the final chunks still get a checkpoint of their own.
                stopping = self._stopping
                try:
                    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
                        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except DatabaseError:
                    # A missed checkpoint only lets the WAL grow until the next one.
                    logger.warning("decay sweep: WAL checkpoint failed", exc_info=True)
                if stopping:
                    return
        finally:
            connections[DEFAULT_DB_ALIAS].close()

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        if self._thread is not None:
            self._stopping = True
            self._due.set()  # one last checkpoint of what the final chunks wrote, then stop
            self._thread.join()
        connection.checkpoints_elsewhere = self.previous


# --- the lock ------------------------------------------------------------------------------------


def _acquire(tenant: str, owner: str) -> None:
    now = timezone.now()
    until = now + timedelta(seconds=lock_lease_s())
    with transaction.atomic():
        taken = SweepLock.objects.filter(tenant=tenant, until__lt=now).update(owner=owner, until=until, acquired_at=now)
        if taken:
            return
        try:
            with transaction.atomic():
                SweepLock.objects.create(tenant=tenant, owner=owner, until=until, acquired_at=now)
        except IntegrityError:
            raise SweepBusy(f"another decay sweep of tenant {tenant!r} is running") from None


def _renew(tenant: str, owner: str) -> None:
    until = timezone.now() + timedelta(seconds=lock_lease_s())
    if not SweepLock.objects.filter(tenant=tenant, owner=owner).update(until=until):
        # Our lease ran out and another sweep took over: stop before touching anything.
        raise SweepBusy(f"the decay sweep lock of tenant {tenant!r} was taken over")


def _release(tenant: str, owner: str) -> None:
    SweepLock.objects.filter(tenant=tenant, owner=owner).delete()


# --- public interface ----------------------------------------------------------------------------


def facts_in_scope(tenant: str, scope: str | None) -> int:
    """How many facts of the tenant (in the scope) a sweep would look at: the sync/async decision."""
    queryset = Fact.objects.filter(tenant=tenant)
    if scope is not None:
        queryset = queryset.filter(scope=scope)
    return queryset.count()


def _bounds(tenant: str) -> tuple[int, int]:
    # Two statements: SQLite reads a lone MIN or MAX off the index's end, but scans the whole
    # tenant's range for both at once (0.1 s over 1M facts).
    low = _scalar(f"SELECT MIN(seq) FROM {_FACT} WHERE tenant = %s", [tenant])
    high = _scalar(f"SELECT MAX(seq) FROM {_FACT} WHERE tenant = %s", [tenant])
    return (low or 0), (high or 0)


def _count(plan: _Plan, lo: int, hi: int, confidences) -> int:
    candidate, _ = plan.predicates(confidences)
    if candidate.text == "1=0":
        return 0
    where = _range(plan.request, lo, hi)
    return _scalar(
        f"SELECT COUNT(*) FROM {_FACT} f WHERE {where.text} AND {candidate.text}", where.params + candidate.params
    )


def _run_chunks(request, plan, job, owner, marker, start, last, counts, fraction, progress, checkpoints):
    """The chunk loop of a sweep: each chunk one clock transaction of steps. Returns (decayed, scanned, chunks)."""
    scanned, decayed = counts
    chunks = 0
    sizer = _Sizer()
    steps = _chunks(plan, start, last, sizer)
    step = next(steps, None)
    while step is not None:
        let_waiting_writers_go(chunk_budget_s())
        chunk_expired = 0
        with clock_transaction() as lease:
            # The budget is for how long this chunk holds the writers' lock, so the clock starts once
            # the lock is ours: time spent queueing behind writers must not shrink the chunks.
            began = time.perf_counter()
            _renew(request.tenant, owner)
            covered = 0
            while step is not None:
                lo, hi, confidences = step
                step_began = time.perf_counter()
                expired, reason = _expire_chunk(request, plan, lo, hi, confidences, marker)
                if expired:
                    _record_chunk(request, lease, lo, hi, expired, reason, marker)
                sizer.observe(time.perf_counter() - step_began)
                chunk_expired += expired
                covered += hi - lo
                reached = hi
                step = next(steps, None)
                if covered >= sizer.largest or time.perf_counter() - began >= chunk_budget_s() or writers_waiting():
                    break
            if chunk_expired:
                logtail.kick_on_commit()
            scanned += chunk_expired
            decayed += chunk_expired
            if job is not None:
                job.position, job.progress, job.scanned, job.decayed = reached, fraction(reached), scanned, decayed
                Job.objects.filter(pk=job.pk).update(
                    position=reached, progress=job.progress, scanned=scanned, decayed=decayed
                )
        if chunk_expired:
            checkpoints.after_chunk()
        chunks += 1
        if progress is not None:
            progress(fraction(reached))
    return decayed, scanned, chunks


def run_sweep(
    request: SweepRequest,
    *,
    actor: str,
    job: Job | None = None,
    progress: Callable[[float], None] | None = None,
) -> SweepResult:
    """Expire the request's candidates chunk by chunk (a dry run only counts them).

    With a Job the sweep resumes after ``job.position`` and the Job's position, progress and
    counts commit with each chunk; the result then holds the Job's totals over all its runs.
    Raises SweepBusy when another sweep of the tenant holds the lock.
    """
    now = timezone.now()
    plan = _Plan(request, load_enabled(request.tenant), now)
    low, last = _bounds(request.tenant)
    # Steps are seq ranges: begin at the tenant's first fact, not at seq 0.
    start = max(job.position if job is not None else 0, low - 1)
    scanned = job.scanned if job is not None else 0
    decayed = job.decayed if job is not None else 0
    span = max(1, last - low + 1)

    def fraction(hi: int) -> float:
        return min(1.0, max(0.0, (hi - low + 1) / span))

    if request.dry_run:
        if not plan.empty:
            for lo, hi, confidences in _chunks(plan, start, last):
                scanned += _count(plan, lo, hi, confidences)
                if progress is not None:
                    progress(fraction(hi))
        return SweepResult(scanned=scanned, decayed=0, dry_run=True)

    owner = uuid.uuid4().hex
    _acquire(request.tenant, owner)
    marker = (_db_time(now), f"decay:{job.id if job is not None else 'sweep'}")
    chunks = 0
    try:
        if not plan.empty:
            with _Checkpointer() as checkpoints:
                decayed, scanned, chunks = _run_chunks(
                    request, plan, job, owner, marker, start, last, (scanned, decayed), fraction, progress, checkpoints
                )
        with transaction.atomic():
            audit.record(
                request.tenant,
                AUDIT_EVENT,
                actor=actor,
                target=str(job.id) if job is not None else "",
                detail={
                    "scope": request.scope,
                    "ttl_seconds": request.ttl_seconds,
                    "min_confidence": request.min_confidence,
                    "policies": not request.explicit,
                    "scanned": scanned,
                    "decayed": decayed,
                    "chunks": chunks,
                    "job_id": str(job.id) if job is not None else None,
                },
            )
            if job is not None:
                job.progress = 1.0
                Job.objects.filter(pk=job.pk).update(progress=1.0)
    finally:
        _release(request.tenant, owner)
    if progress is not None:
        progress(1.0)
    return SweepResult(scanned=scanned, decayed=decayed, dry_run=False)


def preview(policy: DecayPolicy, *, limit: int = 20) -> tuple[int, list[Fact]]:
    """How many facts ``policy`` would expire if the sweep ran now, and the first ``limit`` of them.

    The policy is previewed as if enabled, with the tenant's other enabled policies taking
    precedence where they are more specific.
    """
    policies = [p for p in load_enabled(policy.tenant) if p.pk != policy.pk]
    policies = sorted([*policies, policy], key=precedence)
    plan = _Plan(SweepRequest(tenant=policy.tenant), policies, timezone.now(), only=policy)
    if plan.empty:
        return 0, []
    low, last = _bounds(policy.tenant)
    count, ids = 0, []
    for lo, hi, confidences in _chunks(plan, low - 1, last):
        candidate, _ = plan.predicates(confidences)
        if candidate.text == "1=0":
            continue
        count += _count(plan, lo, hi, confidences)
        if len(ids) < limit:
            where = _range(plan.request, lo, hi)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT f.id FROM {_FACT} f WHERE {where.text} AND {candidate.text} ORDER BY f.seq LIMIT %s",
                    [*where.params, *candidate.params, limit - len(ids)],
                )
                ids += [row[0] for row in cursor.fetchall()]
    by_id = {f.id: f for f in Fact.objects.filter(pk__in=[Fact._meta.pk.to_python(i) for i in ids])}
    return count, sorted(by_id.values(), key=lambda f: f.seq)
