"""The delivery engine: claim due deliveries, send them, record the outcome (WIRE.md §5.3, §5.4).

One pass (``run_once``) has three phases, and only the first and last touch the database:

1. **Claim** (one short transaction): due ``pending`` rows of active subscriptions with a closed
   circuit become ``delivering`` with a lease (``claimed_until``). PostgreSQL locks candidates
   with ``SKIP LOCKED``; SQLite flips each row with a conditional ``UPDATE ... WHERE
   status='pending'`` (a row count of 1 means this worker owns it). A subscription whose circuit
   cool-down has passed gets exactly one probe: the worker that moves it to ``half_open`` with a
   conditional update claims its oldest due delivery. Leases of dead workers expire back to
   ``pending``; a half-open probe's lease is ``circuit_retry_at``.
2. **Send**: delivery-time checks and body rendering run on the calling thread; the HTTP requests
   run on a thread pool, one task per subscription (its deliveries in order, stopping at the
   first failure), so a slow endpoint holds up only itself. Each pool thread keeps one
   ``requests.Session`` (pooled keep-alive connections). Requests are signed just before they go
   out, so every attempt carries a fresh timestamp.
3. **Settle** (one transaction per subscription, its row locked): the outcome of each attempt,
   the retry schedule, the circuit breaker and auto-disable.

Delivery-time checks fail closed: a delivery whose subscriber has no active key with read
permission (when auth is on), or whose fact the subscriber can no longer see (garden membership,
tombstones), is marked ``failed`` with the reason in ``last_error``, without contacting the
receiver and without counting against its circuit. ``failed`` is replayable (redeliver /
recover), so restoring the key or the membership and replaying sends it.

Connect-time SSRF guard: ``PinnedAdapter`` resolves the host through ``ssrf.resolve_pinned`` on
every request and makes urllib3 open the connection to that vetted IP, while the URL keeps the
host name: ``Host`` is the original host, and for https the TLS server name (SNI) and the
certificate check use the original host too (``server_hostname``/``assert_hostname`` pool
arguments). Nothing re-resolves the name after the check. Environment proxies are ignored.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from requests.adapters import HTTPAdapter

from stigmem import audit, events, sanitizer, ssrf
from stigmem.auth import Caller
from stigmem.models import ApiKey, Fact
from stigmem.queries import visible_facts
from stigmem.records import garden_uris_of
from stigmem.values import decode_value
from subscriptions import metrics
from subscriptions.models import Delivery, Subscription
from subscriptions.signing import signature_headers, signing_secrets

logger = logging.getLogger(__name__)

CLAIM_BATCH = 200
COOLDOWN_MAX_S = 3600
JITTER = 0.10
MAX_RESPONSE_BYTES = 2048
ACTOR = "stigmem:delivery"

Status = Delivery.Status
Circuit = Subscription.Circuit


# --- HTTP -----------------------------------------------------------------------------------


class PinnedAdapter(HTTPAdapter):
    """An adapter that connects to the IP the SSRF guard vetted for this very request."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts, host, port = ssrf.split_url(request.url or "")
        request.pinned_ip = ssrf.resolve_pinned(host, port)  # type: ignore[attr-defined]
        # The connection goes to an IP; the receiver must still see the name it was given.
        request.headers["Host"] = parts.netloc.rpartition("@")[2]
        return super().send(request, **kwargs)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        pinned = getattr(request, "pinned_ip", None)
        if pinned:
            name = host_params["host"]
            host_params["host"] = pinned
            if host_params["scheme"] == "https":
                # SNI and certificate verification against the name, not the IP we connect to.
                pool_kwargs["server_hostname"] = name
                pool_kwargs["assert_hostname"] = name
        return host_params, pool_kwargs


_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # an environment proxy would connect to the name, not the pinned IP
        adapter = PinnedAdapter(pool_connections=64, pool_maxsize=4, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    # Kept for the life of the process so the threads' sessions keep their connections warm.
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=max(1, settings.STIGMEM_DELIVERY_CONCURRENCY), thread_name_prefix="stigmem-delivery"
            )
        return _executor


@dataclass(frozen=True)
class Outgoing:
    """A request ready to sign and send: plain data, so pool threads never touch the database."""

    delivery_id: str
    url: str
    body: bytes
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class Attempt:
    """What happened to one claimed delivery in this pass."""

    status_code: int | None = None
    response: str = ""
    error: str = ""
    retry_after: str | None = None
    sent: bool = True  # False: not attempted; it goes back to the queue unchanged
    rejected: str = ""  # a delivery-time check failed; nothing was sent
    woke: bool = False  # a wake line was written

    @property
    def ok(self) -> bool:
        return self.woke or (self.status_code is not None and 200 <= self.status_code < 300)


NOT_SENT = Attempt(sent=False)


def request_headers(item: Outgoing, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": f"stigmem-django/{settings.STIGMEM_VERSION}",
        "X-Stigmem-Event-Id": item.delivery_id,
        **signature_headers(item.secrets, item.delivery_id, timestamp, item.body),
    }


def _read_capped(response: requests.Response) -> str:
    data = b""
    try:
        for chunk in response.iter_content(1024):
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                break
    except requests.RequestException:
        pass  # the status line decides the outcome; a broken body only loses the excerpt
    # PostgreSQL text cannot hold NUL; the excerpt is for humans, so replace it.
    return data[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def unix_now() -> int:
    return int(time.time())


def send_one(item: Outgoing) -> Attempt:
    timeout = settings.STIGMEM_WEBHOOK_TIMEOUT_S
    try:
        response = _session().post(
            item.url,
            data=item.body,
            # Signed now, not when queued: every attempt carries a fresh timestamp.
            headers=request_headers(item, unix_now()),
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        )
    except ssrf.UnsafeUrl as exc:
        return Attempt(error=f"refused at connect time: {exc}")
    except requests.Timeout:
        return Attempt(error=f"timed out after {timeout:g} s")
    except requests.RequestException as exc:
        return Attempt(error=f"network error: {type(exc).__name__}: {exc}"[:500])
    with response:
        return Attempt(
            status_code=response.status_code,
            response=_read_capped(response),
            retry_after=response.headers.get("Retry-After"),
        )


def send_group(items: list[Outgoing], stop_at: float) -> list[Attempt]:
    """One subscription's requests in order. Stops at the first failure (the rest would most
    likely fail too, and would overtake it) and before the lease runs out."""
    results: list[Attempt] = []
    for item in items:
        if time.monotonic() > stop_at:
            break
        attempt = send_one(item)
        results.append(attempt)
        if not attempt.ok:
            break
    return results + [NOT_SENT] * (len(items) - len(results))


# --- schedule arithmetic --------------------------------------------------------------------


def retry_delay(attempts: int, rng: Callable[[float, float], float] = random.uniform) -> float | None:
    """Seconds before the next try after ``attempts`` failed tries, jittered ±10 %; None when
    the schedule is exhausted (dead letter)."""
    schedule = settings.STIGMEM_SUBSCRIPTION_RETRY_SCHEDULE
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * rng(1 - JITTER, 1 + JITTER)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def lease_seconds() -> float:
    return settings.STIGMEM_WEBHOOK_TIMEOUT_S * 2 + settings.STIGMEM_DELIVERY_LEASE_MARGIN_S


# --- claiming -------------------------------------------------------------------------------


def release_expired_leases(now: datetime) -> int:
    """Deliveries whose worker died mid-delivery go back to the queue."""
    return Delivery.objects.filter(status=Status.DELIVERING, claimed_until__lt=now).update(
        status=Status.PENDING, claimed_until=None
    )


def _due(now: datetime):
    return Delivery.objects.filter(status=Status.PENDING, next_attempt_at__lte=now)


def _claim_ids(candidates, lease: datetime, limit: int) -> list[uuid.UUID]:
    ordered = candidates.order_by("next_attempt_at", "created_at")
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            ids = list(ordered.select_for_update(skip_locked=True, of=("self",)).values_list("id", flat=True)[:limit])
            Delivery.objects.filter(id__in=ids).update(status=Status.DELIVERING, claimed_until=lease)
            return ids
        # SQLite: the write transaction is exclusive; the conditional UPDATE still guards each row.
        ids = list(ordered.values_list("id", flat=True)[:limit])
        return [
            delivery_id
            for delivery_id in ids
            if Delivery.objects.filter(id=delivery_id, status=Status.PENDING).update(
                status=Status.DELIVERING, claimed_until=lease
            )
        ]


def _claim_probes(now: datetime, lease: datetime) -> list[uuid.UUID]:
    """One probe per subscription whose circuit cool-down (or previous probe's lease) is over."""
    due_here = _due(now).filter(subscription=OuterRef("pk"))
    ready = Subscription.objects.filter(
        status=Subscription.Status.ACTIVE,
        circuit__in=[Circuit.OPEN, Circuit.HALF_OPEN],
        circuit_retry_at__lte=now,
    ).filter(Exists(due_here))
    probes = []
    for sub_id, retry_at in ready.values_list("id", "circuit_retry_at"):
        owned = Subscription.objects.filter(
            id=sub_id, circuit__in=[Circuit.OPEN, Circuit.HALF_OPEN], circuit_retry_at=retry_at
        ).update(circuit=Circuit.HALF_OPEN, circuit_retry_at=lease)
        if not owned:
            continue  # another worker sends this probe
        claimed = _claim_ids(_due(now).filter(subscription_id=sub_id), lease, 1)
        if claimed:
            probes.extend(claimed)
        else:  # its queue emptied meanwhile: stay open, probe as soon as something is due
            Subscription.objects.filter(id=sub_id).update(circuit=Circuit.OPEN, circuit_retry_at=retry_at)
    return probes


def claim(now: datetime, limit: int = CLAIM_BATCH) -> list[Delivery]:
    """Claim due deliveries for this worker; each comes back ``delivering`` with a lease."""
    release_expired_leases(now)
    lease = now + timedelta(seconds=lease_seconds())
    ids = _claim_probes(now, lease)
    open_to_send = _due(now).filter(
        subscription__status=Subscription.Status.ACTIVE, subscription__circuit=Circuit.CLOSED
    )
    ids += _claim_ids(open_to_send, lease, limit)
    rows = Delivery.objects.filter(id__in=ids).select_related("subscription")
    return sorted(rows, key=lambda d: (d.next_attempt_at, d.created_at))


# --- rendering and delivery-time checks -----------------------------------------------------


def subscriber_caller(subscription: Subscription, now: datetime) -> Caller | None:
    """The subscriber as a reader, or None when it has lost the right to read (fail closed)."""
    if not settings.STIGMEM_AUTH_REQUIRED:
        return Caller(subscription.subscriber_identity, subscription.tenant, frozenset({"read"}))
    keys = ApiKey.objects.filter(
        tenant=subscription.tenant, entity_uri=subscription.subscriber_identity, revoked_at__isnull=True
    ).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    permissions = frozenset(p for perms in keys.values_list("permissions", flat=True) for p in perms)
    caller = Caller(subscription.subscriber_identity, subscription.tenant, permissions)
    return caller if caller.has("read") else None


def fact_payload(fact: Fact) -> dict[str, Any]:
    verdict = sanitizer.inspect(fact.value_type, fact.value_v)
    if verdict.redacted:
        return {"fact_id": str(fact.id), "redacted": True}
    return {
        "id": str(fact.id),
        "entity": fact.entity,
        "relation": fact.relation,
        "value_type": fact.value_type,
        "value_v": decode_value(fact.value_type, fact.value_v),
        "source": fact.source,
        "timestamp": fact.timestamp.isoformat(),
        "scope": fact.scope,
        "confidence": fact.confidence,
        "garden_id": garden_uris_of([fact]).get(fact.garden) if fact.garden else None,
        "cid": fact.cid,
        "hlc": fact.hlc,
        "sanitizer_warnings": verdict.warnings,
    }


def render(delivery: Delivery, caller: Caller) -> dict[str, Any] | str:
    """The request body, or the reason the subscriber may not receive this event."""
    body: dict[str, Any] = {
        "event_id": str(delivery.id),
        "idempotency_key": str(delivery.id),
        "subscription_id": str(delivery.subscription_id),
        "event_type": delivery.event_type,
        "topic": delivery.topic,
    }
    if delivery.fact_id is not None:
        fact = visible_facts(caller).filter(pk=delivery.fact_id).first()
        if fact is None:
            return "the fact is no longer visible to the subscriber (tombstoned, or not a member of its garden)"
        body["fact"] = fact_payload(fact)
    else:
        body["payload"] = delivery.payload or (delivery.event.payload if delivery.event_id else {})
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_wake_lock = threading.Lock()


def write_wake(delivery: Delivery, body: dict[str, Any], now: datetime) -> None:
    subscription = delivery.subscription
    wake: dict[str, Any] = {
        "event_id": str(delivery.id),
        "subscription_id": str(subscription.id),
        "subscriber_identity": subscription.subscriber_identity,
        "delivery_address": subscription.delivery_address,
        "event_type": delivery.event_type,
        "fact": body.get("fact"),
        "ts": now.isoformat(),
    }
    if "payload" in body:
        wake["payload"] = body["payload"]
    line = json.dumps({"stigmem_wake": wake}, separators=(",", ":"), ensure_ascii=False) + "\n"
    target = settings.STIGMEM_WAKE_LOG
    with _wake_lock:
        if target == "-":
            sys.stderr.write(line)
            sys.stderr.flush()
        else:
            # One write per line in append mode: lines from several processes never interleave.
            with open(target, "a", encoding="utf-8") as log:
                log.write(line)


# --- settling -------------------------------------------------------------------------------


def _disable(subscription: Subscription, reason: str, now: datetime) -> None:
    subscription.status = Subscription.Status.DISABLED
    subscription.last_error = reason
    audit.record(
        subscription.tenant,
        "subscription_disabled",
        actor=ACTOR,
        target=str(subscription.id),
        detail={"subscription_id": str(subscription.id), "reason": reason},
    )
    events.publish(
        subscription.tenant,
        events.SUBSCRIPTION_DISABLED,
        {
            "subscription_id": str(subscription.id),
            "subscriber_identity": subscription.subscriber_identity,
            "reason": reason,
            "disabled_at": now.isoformat(),
        },
    )


def _note_success(subscription: Subscription, now: datetime) -> None:
    subscription.last_delivered_at = now
    subscription.consecutive_failures = 0
    subscription.failing_since = None
    subscription.circuit = Circuit.CLOSED
    subscription.circuit_cooldown_s = 0
    subscription.circuit_retry_at = None


def _note_failure(subscription: Subscription, error: str, now: datetime) -> None:
    subscription.consecutive_failures += 1
    subscription.failing_since = subscription.failing_since or now
    subscription.last_error = error
    if subscription.circuit == Circuit.HALF_OPEN:  # the probe failed: open again, wait twice as long
        first = settings.STIGMEM_SUBSCRIPTION_CIRCUIT_COOLDOWN_S
        cooldown = min(max(subscription.circuit_cooldown_s, first) * 2, COOLDOWN_MAX_S)
        _open(subscription, cooldown, now)
    elif (
        subscription.circuit == Circuit.CLOSED
        and subscription.consecutive_failures >= settings.STIGMEM_SUBSCRIPTION_CIRCUIT_THRESHOLD
    ):
        _open(subscription, settings.STIGMEM_SUBSCRIPTION_CIRCUIT_COOLDOWN_S, now)
    failing_for = (now - subscription.failing_since).total_seconds()
    if (
        subscription.status == Subscription.Status.ACTIVE
        and failing_for >= settings.STIGMEM_SUBSCRIPTION_DISABLE_AFTER_S
    ):
        _disable(subscription, f"failing for {int(failing_for)} s; last error: {error}", now)


def _open(subscription: Subscription, cooldown_s: int, now: datetime) -> None:
    subscription.circuit = Circuit.OPEN
    subscription.circuit_cooldown_s = cooldown_s
    subscription.circuit_retry_at = now + timedelta(seconds=cooldown_s)


def _describe(attempt: Attempt) -> str:
    if attempt.status_code is None:
        return attempt.error
    code = attempt.status_code
    if 300 <= code < 400:
        return f"HTTP {code}: redirects are not followed"
    return f"HTTP {code}"


def _settle_one(delivery: Delivery, subscription: Subscription, attempt: Attempt, now: datetime) -> str:
    """Apply one attempt to the delivery and its subscription; returns the metrics outcome."""
    delivery.claimed_until = None
    if not attempt.sent:
        delivery.status = Status.PENDING
        return "released"
    if attempt.rejected:
        delivery.status = Status.FAILED
        delivery.last_error = attempt.rejected
        return "rejected"
    delivery.attempts += 1
    if attempt.woke or attempt.status_code is not None:
        delivery.last_status_code = attempt.status_code
        delivery.last_response = attempt.response[:MAX_RESPONSE_BYTES]
    if attempt.ok:
        delivery.status = Status.DELIVERED
        delivery.delivered_at = now
        delivery.last_error = ""
        _note_success(subscription, now)
        metrics.DELIVERY_LATENCY.observe(max(0.0, (now - delivery.created_at).total_seconds()))
        return "delivered"
    error = _describe(attempt)
    delivery.last_error = error
    code = attempt.status_code
    if code == 410:
        delivery.status = Status.FAILED
        if subscription.status == Subscription.Status.ACTIVE:
            _disable(subscription, "the receiver answered 410 Gone", now)
        return "gone"
    _note_failure(subscription, error, now)
    retryable = code is None or code == 429 or code >= 500 or 300 <= code < 400
    delay = retry_delay(delivery.attempts) if retryable else None
    if delay is None:
        delivery.status = Status.FAILED
        if retryable:
            delivery.last_error = f"{error} (gave up after {delivery.attempts} attempts)"
        return "failed"
    retry_after = parse_retry_after(attempt.retry_after, now)
    if retry_after is not None:
        delay = min(retry_after, max(settings.STIGMEM_SUBSCRIPTION_RETRY_SCHEDULE))
    delivery.status = Status.PENDING
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    return "retry"


DELIVERY_FIELDS = [
    "status",
    "claimed_until",
    "attempts",
    "next_attempt_at",
    "delivered_at",
    "last_error",
    "last_status_code",
    "last_response",
]


def settle(subscription_id: uuid.UUID, results: Iterable[tuple[Delivery, Attempt]], now: datetime) -> None:
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().filter(pk=subscription_id).first()
        if subscription is None:
            return  # deleted meanwhile; its deliveries went with it
        tried = False
        for delivery, attempt in results:
            outcome = _settle_one(delivery, subscription, attempt, now)
            tried = tried or outcome not in ("released", "rejected")
            metrics.DELIVERIES.labels(outcome).inc()
            delivery.save(update_fields=DELIVERY_FIELDS)
        if subscription.circuit == Circuit.HALF_OPEN and not tried:
            # The probe was never sent: give the circuit back so the next pass probes again.
            subscription.circuit = Circuit.OPEN
            subscription.circuit_retry_at = now
        subscription.save()


# --- one pass -------------------------------------------------------------------------------


def run_once(now: datetime | None = None, limit: int = CLAIM_BATCH) -> int:
    """Claim, send and settle one batch; returns how many deliveries it claimed."""
    now = now or timezone.now()
    batch = claim(now, limit)
    if not batch:
        return 0
    # Stop starting requests while the last one can still finish, and be settled, within the lease.
    stop_at = time.monotonic() + settings.STIGMEM_WEBHOOK_TIMEOUT_S + settings.STIGMEM_DELIVERY_LEASE_MARGIN_S / 2
    callers: dict[uuid.UUID, Caller | None] = {}
    results: dict[uuid.UUID, list[tuple[Delivery, Attempt]]] = {}
    outgoing: dict[uuid.UUID, list[tuple[Delivery, Outgoing]]] = {}
    for delivery in batch:
        subscription = delivery.subscription
        if subscription.id not in callers:
            callers[subscription.id] = subscriber_caller(subscription, now)
        caller = callers[subscription.id]
        done = results.setdefault(subscription.id, [])
        if caller is None:
            done.append((delivery, Attempt(rejected="the subscriber has no active API key with read permission")))
            continue
        body = render(delivery, caller)
        if isinstance(body, str):
            done.append((delivery, Attempt(rejected=body)))
        elif subscription.on_change == Subscription.OnChange.WAKE:
            write_wake(delivery, body, now)
            done.append((delivery, Attempt(woke=True)))
        else:
            item = Outgoing(
                str(delivery.id), subscription.delivery_address, encode(body), signing_secrets(subscription, now)
            )
            outgoing.setdefault(subscription.id, []).append((delivery, item))
    futures = {
        sub_id: _pool().submit(send_group, [item for _, item in pairs], stop_at) for sub_id, pairs in outgoing.items()
    }
    for sub_id, future in futures.items():
        pairs = outgoing[sub_id]
        try:
            attempts = future.result()
        except Exception:  # a bug in sending must not strand the claims until their lease expires
            logger.exception("sending to subscription %s failed", sub_id)
            attempts = [NOT_SENT] * len(pairs)
        results.setdefault(sub_id, []).extend(zip((d for d, _ in pairs), attempts, strict=True))
    for sub_id, pairs in results.items():
        settle(sub_id, pairs, now)
    return len(batch)


def update_gauges() -> None:
    metrics.OPEN_CIRCUITS.set(Subscription.objects.exclude(circuit=Circuit.CLOSED).count())
    metrics.QUEUE_DEPTH.set(Delivery.objects.filter(status__in=[Status.PENDING, Status.DELIVERING]).count())


def run_deliveries(budget_s: float = 50.0) -> int:
    """Deliver until nothing is due or the time budget is spent; returns how many were claimed."""
    deadline = time.monotonic() + budget_s
    total = 0
    while time.monotonic() < deadline:
        handled = run_once()
        total += handled
        if handled == 0:
            break
    update_gauges()
    return total


def prune_deliveries(now: datetime | None = None, chunk: int = 5000) -> int:
    """Delete delivered rows older than the replay window, in chunks; failed ones stay for replay."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.STIGMEM_SUBSCRIPTION_REPLAY_S)
    old = Delivery.objects.filter(status=Status.DELIVERED, created_at__lt=cutoff)
    deleted = 0
    while ids := list(old.values_list("id", flat=True)[:chunk]):
        deleted += Delivery.objects.filter(id__in=ids).delete()[0]
    return deleted
