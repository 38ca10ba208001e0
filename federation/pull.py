"""Pulling facts and tombstones from peers (WIRE.md §6.5, §6.6).

One pull of one peer: claim the peer's pull lease, then page through
``GET <peer>/v1/federation/facts`` while ``has_more`` and the time budget lasts, each page
ingested and its cursor saved in one transaction (a crash loses or repeats nothing), then the
peer's tombstones and revocations the same way. Then the lease is released with the outcome and
the time of the next pull: the interval after a success, a growing back-off after a failure.

Leases make pulling safe with several workers on several hosts: a conditional UPDATE takes the
lease only when it is free or expired (on SQLite and PostgreSQL alike), every page's commit
checks it is still held, so exactly one worker pulls a peer at a time. ``pull_due_peers`` pulls
the due peers in parallel threads: a failing or hanging peer costs its own thread at most its
timeout, never the other peers' progress.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from federation import metrics, tokens
from federation.ingest import IngestResult, clip, ingest_page
from federation.models import Peer
from stigmem import audit, ssrf
from stigmem import tombstones as tombstone_store
from stigmem.values import text_problem

logger = logging.getLogger(__name__)

OK = "ok"
BUSY = "busy"  # another worker holds the peer's pull lease
NOT_ACTIVE = "not_active"
HTTP_ERROR = "http_error"
NETWORK_ERROR = "network_error"
MALFORMED_PAGE = "malformed_page"
RATE_LIMITED = "rate_limited"
ERROR = "error"
FAILURES = frozenset({HTTP_ERROR, NETWORK_ERROR, MALFORMED_PAGE, RATE_LIMITED, ERROR})

FACTS_PATH = "/v1/federation/facts"
TOMBSTONES_PATH = "/v1/federation/tombstones"
TOMBSTONE_PAGE_LIMIT = 200
MAX_BACKOFF_S = 3600.0
JITTER = 0.10
# A page of 500 facts of 64 KiB text each, JSON-escaped, stays below this; anything larger is hostile.
MAX_PAGE_BYTES = 128 * 1024 * 1024
MAX_ERROR_BODY = 2048
MAX_ERROR_TEXT = 500
MAX_CURSOR_LENGTH = 1024
# Besides the budget, a lease covers the requests still in flight when the budget ends.
LEASE_MARGIN_S = 60.0

PULL_FAILED = "federation_pull_failed"
TOMBSTONE_REJECTED = "federation_tombstone_rejected"
CURSOR_RESET = "federation_cursor_reset"


@dataclass
class PullResult:
    peer_id: str
    node_id: str
    outcome: str = OK
    pages: int = 0
    ingested: int = 0
    rejected: int = 0
    duplicates: int = 0
    tombstones: int = 0
    error: str = ""
    lag_seconds: float | None = None
    # The budget ran out before the peer said has_more=false: the peer is due again at once.
    more_pending: bool = False

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES


class PullFailed(Exception):
    def __init__(self, outcome: str, error: str, *, retry_after: float | None = None):
        super().__init__(error)
        self.outcome = outcome
        # Often quotes the peer: made storable (no NUL, no lone surrogates) and short.
        self.error = clip(error, MAX_ERROR_TEXT)
        self.retry_after = retry_after


@dataclass(frozen=True)
class _FactPage:
    facts: list[Any]
    cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class _TombstonePage:
    tombstones: list[Any]
    revocations: list[Any]
    cursor: str | None
    has_more: bool


# SQLite runs one write transaction at a time whatever the threads do; parallel pulls take turns
# at the database here, in the process, and only make their HTTP requests side by side. An
# in-memory database (the test suite's) needs it: its connections share a cache whose table
# locks fail at once instead of waiting.
_sqlite_turn = threading.RLock()


@contextmanager
def _db_turn() -> Iterator[None]:
    if connection.vendor != "sqlite":
        yield
        return
    with _sqlite_turn:
        yield


def _default_owner() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _lease_seconds(budget_s: float) -> float:
    return budget_s + 2 * settings.STIGMEM_FEDERATION_TIMEOUT_S + LEASE_MARGIN_S


def _claim(peer_pk: uuid.UUID, owner: str, lease_s: float) -> bool:
    """Take the peer's pull lease if it is free or expired: one conditional UPDATE, atomic everywhere."""
    now = timezone.now()
    free = Q(pull_lease_until__isnull=True) | Q(pull_lease_until__lte=now)
    taken = Peer.objects.filter(free, pk=peer_pk, status=Peer.Status.ACTIVE).update(
        pull_lease_owner=owner, pull_lease_until=now + timedelta(seconds=lease_s)
    )
    return taken == 1


def pull_peer(
    peer_or_id: Peer | uuid.UUID | str, *, budget_s: float | None = None, owner: str | None = None
) -> PullResult:
    """Pull ``peer`` now, whatever its ``next_pull_at``; returns what happened.

    Raises Peer.DoesNotExist for an unknown peer. A peer that is not active is not pulled
    (``not_active``), nor one whose lease another worker holds (``busy``).
    """
    budget = settings.STIGMEM_FEDERATION_PULL_BUDGET_S if budget_s is None else budget_s
    owner = (owner or _default_owner())[: Peer._meta.get_field("pull_lease_owner").max_length]
    lease_s = _lease_seconds(budget)
    with _db_turn():
        peer_pk = peer_or_id.pk if isinstance(peer_or_id, Peer) else peer_or_id
        peer = Peer.objects.get(pk=peer_pk)
        result = PullResult(peer.peer_id, peer.node_id)
        if not _claim(peer.pk, owner, lease_s):
            peer.refresh_from_db(fields=["status"])
            result.outcome = NOT_ACTIVE if peer.status != Peer.Status.ACTIVE else BUSY
            metrics.PULLS.labels(peer=peer.node_id, outcome=result.outcome).inc()
            return result
        # The state as of the claim: nobody else changes the pull fields while we hold the lease.
        peer.refresh_from_db()
    run = _Pull(peer, owner, budget, lease_s, result)
    retry_after = None
    try:
        run.run()
    except PullFailed as failure:
        result.outcome, result.error, retry_after = failure.outcome, failure.error, failure.retry_after
    except Exception as exc:
        logger.exception("pulling %s failed", peer.node_id)
        result.outcome, result.error = ERROR, clip(f"{type(exc).__name__}: {exc}", MAX_ERROR_TEXT)
    finally:
        try:
            with _db_turn():
                _finish(peer, owner, result, run, retry_after)
        except Exception:
            # The lease then simply expires; the next pull takes it over.
            logger.exception("could not record the pull of %s", peer.node_id)
    metrics.PULLS.labels(peer=peer.node_id, outcome=result.outcome).inc()
    return result


class _Pull:
    """The state of one pull of one peer, between claiming and releasing its lease."""

    def __init__(self, peer: Peer, owner: str, budget_s: float, lease_s: float, result: PullResult):
        self.peer = peer
        self.owner = owner
        self.lease_s = lease_s
        self.result = result
        self.deadline = time.monotonic() + budget_s
        self.newest: datetime | None = None
        self.drained = False
        self.session = requests.Session()
        # Connect where the node_url says, never through a proxy from the environment.
        self.session.trust_env = False

    def run(self) -> None:
        try:
            ssrf.check_url(self.peer.node_url, allow_private=settings.STIGMEM_FEDERATION_ALLOW_PRIVATE)
        except ssrf.UnsafeUrl as exc:
            raise PullFailed(ERROR, f"peer URL refused: {exc}") from None
        with self.session:
            self._pull_facts()
            self._pull_tombstones()

    # --- facts ---------------------------------------------------------------------------------

    def _pull_facts(self) -> None:
        cursor = self.peer.fact_cursor
        while True:
            params = {"limit": settings.STIGMEM_FEDERATION_PAGE_LIMIT}
            page: _FactPage = self._get(FACTS_PATH, params, cursor, _fact_page)
            # A page without a cursor keeps ours: starting over would re-read the whole log.
            new_cursor = page.cursor if page.cursor is not None else cursor
            self._save_fact_page(page, new_cursor)
            if not page.has_more:
                self.drained = True
                return
            if new_cursor == cursor:
                # has_more without progress would ask for the same page forever.
                logger.warning("peer %s said has_more but its cursor did not move", self.peer.node_id)
                return
            cursor = new_cursor
            if time.monotonic() >= self.deadline:
                self.result.more_pending = True
                return

    def _save_fact_page(self, page: _FactPage, cursor: str | None) -> None:
        with _db_turn(), transaction.atomic():
            ingested = ingest_page(self.peer, page.facts)
            self._update(
                fact_cursor=cursor,
                facts_ingested=F("facts_ingested") + ingested.ingested,
                facts_rejected=F("facts_rejected") + ingested.rejected,
            )
        self.peer.fact_cursor = cursor
        self._count(ingested)

    def _count(self, ingested: IngestResult) -> None:
        result = self.result
        result.pages += 1
        result.ingested += ingested.ingested
        result.rejected += ingested.rejected
        result.duplicates += ingested.duplicates
        label = self.peer.node_id
        for outcome, count in (
            ("ingested", ingested.ingested),
            ("duplicate", ingested.duplicates),
            ("rejected", ingested.rejected),
        ):
            if count:
                metrics.INGRESS.labels(peer=label, outcome=outcome).inc(count)
        if ingested.newest_timestamp is not None and (self.newest is None or ingested.newest_timestamp > self.newest):
            self.newest = ingested.newest_timestamp

    # --- tombstones ----------------------------------------------------------------------------

    def _pull_tombstones(self) -> None:
        """Tombstones after facts, at least one page per pull: a deletion must not wait for a backlog."""
        cursor = self.peer.tombstone_cursor
        while True:
            page: _TombstonePage | None = self._get(
                TOMBSTONES_PATH, {"limit": TOMBSTONE_PAGE_LIMIT}, cursor, _tombstone_page
            )
            if page is None:
                return  # the peer does not serve tombstones (the reference's default)
            new_cursor = page.cursor if page.cursor is not None else cursor
            with _db_turn(), transaction.atomic():
                applied = self._apply_tombstones(page)
                self._update(tombstone_cursor=new_cursor, tombstones_ingested=F("tombstones_ingested") + applied)
            self.peer.tombstone_cursor = new_cursor
            self.result.tombstones += applied
            if not page.has_more or new_cursor == cursor or time.monotonic() >= self.deadline:
                return
            cursor = new_cursor

    def _apply_tombstones(self, page: _TombstonePage) -> int:
        peer = self.peer
        applied = 0
        kinds: list[tuple[str, list[Any], Callable, Callable]] = [
            ("tombstone", page.tombstones, tombstone_store.verify_tombstone, tombstone_store.store_remote_tombstone),
            (
                "revocation",
                page.revocations,
                tombstone_store.verify_revocation,
                tombstone_store.store_remote_revocation,
            ),
        ]
        # Tombstones first: a revocation may name a tombstone of the same page.
        for kind, records, verify, save in kinds:
            for record in records:
                problem = self._tombstone_problem(record, verify)
                if problem is None:
                    try:
                        applied += save(peer.tenant, record, peer.node_id)
                    except tombstone_store.RemoteRecordRejected as exc:
                        problem = exc.reason
                if problem is not None:
                    record_id = record.get("id") if isinstance(record, dict) else None
                    audit.record(
                        peer.tenant,
                        TOMBSTONE_REJECTED,
                        actor=peer.node_id,
                        target=peer.peer_id,
                        detail={"reason": problem, "kind": kind, "id": clip(record_id)},
                    )
        return applied

    def _tombstone_problem(self, record: Any, verify: Callable[[Any, str], bool]) -> str | None:
        peer = self.peer
        if not isinstance(record, dict):
            return "not_an_object"
        if record.get("signed_by") != peer.node_id:
            return "not_signed_by_peer"
        if not verify(record, peer.federation_pubkey):
            return "invalid_signature"
        scope = record.get("scope")
        # A revocation has no scope. A tombstone may hide facts in the agreed scopes (or all of
        # them, "*"): a peer has no say over our local facts.
        if scope is not None and scope != "*" and (scope == "local" or scope not in peer.allowed_scopes):
            return "scope_not_agreed"
        return None

    # --- HTTP ----------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any], cursor: str | None, parse: Callable[[Any], Any]) -> Any:
        """GET one page and parse it; None for a 404 from the tombstone endpoint; PullFailed otherwise."""
        if cursor is not None:
            params = {**params, "cursor": cursor}
        with _db_turn():  # minting may read the node key from the database
            token = tokens.mint(self.peer)
        timeout = settings.STIGMEM_FEDERATION_TIMEOUT_S
        url = self.peer.node_url.rstrip("/") + path
        try:
            response = self.session.get(
                url,
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout:
            raise PullFailed(NETWORK_ERROR, f"GET {path}: no answer within {timeout:g} s") from None
        except requests.RequestException as exc:
            raise PullFailed(NETWORK_ERROR, f"GET {path}: {type(exc).__name__}: {exc}") from None
        with response:
            status = response.status_code
            if status == 404 and path == TOMBSTONES_PATH:
                return None
            if status == 429:
                retry_after = _retry_after(response.headers.get("Retry-After"), timezone.now())
                raise PullFailed(RATE_LIMITED, f"GET {path}: HTTP 429", retry_after=retry_after)
            if status != 200:
                detail = _error_detail(_read(response, MAX_ERROR_BODY, path, truncate=True))
                raise PullFailed(HTTP_ERROR, f"GET {path}: HTTP {status}" + (f": {detail}" if detail else ""))
            body = _read(response, MAX_PAGE_BYTES, path)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise PullFailed(MALFORMED_PAGE, f"GET {path}: the response is not JSON") from None
        try:
            return parse(data)
        except ValueError as exc:
            raise PullFailed(MALFORMED_PAGE, f"GET {path}: {exc}") from None

    def _update(self, **fields: Any) -> None:
        """Save pull state with the page, as long as this worker still holds the lease."""
        fields["pull_lease_until"] = timezone.now() + timedelta(seconds=self.lease_s)
        if Peer.objects.filter(pk=self.peer.pk, pull_lease_owner=self.owner).update(**fields) != 1:
            # Another worker took the lease over (ours expired): roll this page back, it pulls it.
            raise PullFailed(ERROR, "the pull lease was lost (taken over by another worker, or the cursor was reset)")


def _read(response: requests.Response, limit: int, path: str, *, truncate: bool = False) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=64 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise PullFailed(MALFORMED_PAGE, f"GET {path}: the response is larger than {limit} bytes")
    except requests.RequestException as exc:
        raise PullFailed(NETWORK_ERROR, f"GET {path}: reading the response: {type(exc).__name__}") from None
    return b"".join(chunks)[:limit]


def _error_detail(body: bytes) -> str:
    """The ``detail`` of an error body (e.g. ``peer_not_approved``), or its first line of text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and "detail" in data:
        detail = data["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)[:300]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return clip(first, 300)


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped at an hour."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_BACKOFF_S)


def _cursor(data: dict[str, Any]) -> str | None:
    cursor = data.get("cursor")
    if cursor is None:
        return None
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH or text_problem(cursor):
        raise ValueError(f"cursor must be null or a string of at most {MAX_CURSOR_LENGTH} characters")
    return cursor


def _has_more(data: dict[str, Any]) -> bool:
    has_more = data.get("has_more")
    if not isinstance(has_more, bool):
        raise ValueError("has_more is missing or not a boolean")
    return has_more


def _fact_page(data: Any) -> _FactPage:
    if not isinstance(data, dict):
        raise ValueError("the page is not a JSON object")
    facts = data.get("facts")
    if not isinstance(facts, list):
        raise ValueError("facts is missing or not a list")
    return _FactPage(facts, _cursor(data), _has_more(data))


def _tombstone_page(data: Any) -> _TombstonePage:
    if not isinstance(data, dict):
        raise ValueError("the page is not a JSON object")
    found = data.get("tombstones")
    revoked = data.get("revocations", [])
    if not isinstance(found, list) or not isinstance(revoked, list):
        raise ValueError("tombstones or revocations is not a list")
    return _TombstonePage(found, revoked, _cursor(data), _has_more(data))


# --- after the pull --------------------------------------------------------------------------


def backoff_seconds(failures: int, rng: Callable[[float, float], float] = random.uniform) -> float:
    """The wait after ``failures`` failed pulls in a row: interval * 2^failures, ±10 %, at most an hour."""
    base = settings.STIGMEM_FEDERATION_PULL_INTERVAL_S * 2 ** min(failures, 32)
    return min(base * rng(1 - JITTER, 1 + JITTER), MAX_BACKOFF_S)


def _finish(peer: Peer, owner: str, result: PullResult, run: _Pull, retry_after: float | None) -> None:
    """Release the lease with the outcome, the next pull time, the lag, and an audit row on failure."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "pull_lease_owner": "",
        "pull_lease_until": None,
        "last_pull_at": now,
        "last_pull_outcome": result.outcome,
        "last_pull_error": result.error,
    }
    interval = settings.STIGMEM_FEDERATION_PULL_INTERVAL_S
    if result.failed:
        failures = peer.consecutive_failures + 1
        if result.outcome == RATE_LIMITED:
            wait = retry_after if retry_after is not None else float(interval)
        else:
            wait = backoff_seconds(failures)
        fields.update(consecutive_failures=failures, next_pull_at=now + timedelta(seconds=wait))
    else:
        fields.update(
            consecutive_failures=0, next_pull_at=now if result.more_pending else now + timedelta(seconds=interval)
        )
    if run.newest is not None:
        result.lag_seconds = max(0.0, (now - run.newest).total_seconds())
        newest = run.newest if peer.newest_ingested_at is None else max(run.newest, peer.newest_ingested_at)
        fields["newest_ingested_at"] = newest
    elif run.drained:
        result.lag_seconds = 0.0  # caught up, and nothing new was waiting
    if result.lag_seconds is not None:
        fields["lag_seconds"] = result.lag_seconds
        metrics.REPLICATION_LAG.labels(peer=peer.node_id).set(result.lag_seconds)
    with transaction.atomic():
        released = Peer.objects.filter(pk=peer.pk, pull_lease_owner=owner).update(**fields)
        # A 429 is the peer pacing us, not a fault worth an audit row.
        if released and result.failed and result.outcome != RATE_LIMITED:
            audit.record(
                peer.tenant,
                PULL_FAILED,
                actor=peer.node_id,
                target=peer.peer_id,
                detail={
                    "outcome": result.outcome,
                    "error": result.error,
                    "consecutive_failures": fields["consecutive_failures"],
                    "next_pull_at": fields["next_pull_at"].isoformat(),
                },
            )


# --- many peers ------------------------------------------------------------------------------


def _pull_in_thread(peer_id: uuid.UUID) -> PullResult:
    try:
        return pull_peer(peer_id)
    except Exception as exc:
        logger.exception("pulling peer %s failed", peer_id)
        return PullResult(str(peer_id), "", outcome=ERROR, error=clip(f"{type(exc).__name__}: {exc}", MAX_ERROR_TEXT))
    finally:
        # Pool threads end with the cycle: don't leave their connections behind.
        connections.close_all()


def pull_due_peers(*, force: bool = False) -> list[PullResult]:
    """Pull every active peer that is due (every active peer with ``force``), in parallel threads."""
    now = timezone.now()
    peers = Peer.objects.filter(status=Peer.Status.ACTIVE)
    if not force:
        peers = peers.filter(Q(next_pull_at__isnull=True) | Q(next_pull_at__lte=now)).filter(
            Q(pull_lease_until__isnull=True) | Q(pull_lease_until__lte=now)
        )
    ids = list(peers.order_by(F("next_pull_at").asc(nulls_first=True), "node_id").values_list("id", flat=True))
    if not ids:
        return []
    workers = max(1, min(settings.STIGMEM_FEDERATION_PULL_CONCURRENCY, len(ids)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stigmem-pull") as pool:
        return list(pool.map(_pull_in_thread, ids))


def reset_cursor(peer: Peer, actor: str) -> None:
    """Start over: the next pull asks the peer for its facts and tombstones from the beginning.

    A pull running meanwhile loses its lease, so its next page commit rolls back instead of
    writing its cursor over the reset.
    """
    with transaction.atomic():
        before = Peer.objects.select_for_update().values("fact_cursor", "tombstone_cursor").get(pk=peer.pk)
        Peer.objects.filter(pk=peer.pk).update(
            fact_cursor=None, tombstone_cursor=None, pull_lease_owner="", pull_lease_until=None
        )
        audit.record(peer.tenant, CURSOR_RESET, actor=actor, target=peer.peer_id, detail={"was": before})
    peer.fact_cursor = peer.tombstone_cursor = None
