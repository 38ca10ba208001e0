"""The subscription resource (WIRE.md §5.1): create, read, delete, rotate, pause, resume, replay.

Plain functions shared by the API views and the admin console. Rules:

- A subscription belongs to its subscriber (the caller's entity URI) inside its tenant; anyone
  else gets 404 for it, never 403, so ids reveal nothing.
- Create is idempotent: the same ``idempotency_key``, or the same (target, on_change,
  delivery_address, topics), for the same subscriber returns the existing row, including its
  current ``signing_secret``: a client whose first response was lost must still learn the
  secret, and the caller is the owner. Concurrent duplicates collide on a unique constraint
  (``dedup_key``) and get the winner's row.
- Resume of a ``disabled`` subscription re-activates it and resets its failure state (the
  operator says the receiver is fixed); resume of a ``paused`` one leaves the breaker alone.
- Re-queued deliveries (redeliver, recover) restart with zero attempts, so they get the whole
  retry schedule again; their last error stays for information.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from stigmem import audit, ssrf
from stigmem.auth import Caller
from stigmem.errors import InputInvalid, coded, field_error, not_found
from stigmem.events import TopicError, TopicPattern
from stigmem.fact_input import SCOPES, parse_garden_uri
from stigmem.gardens import garden_for_query
from stigmem.limits import MAX_URI_LENGTH
from stigmem.normalize import UriInvalid, normalize_uri
from stigmem.queries import decode_cursor, encode_cursor, parse_limit, visible_facts
from stigmem.values import parse_iso_datetime, text_problem
from subscriptions import tasks
from subscriptions.delivery import fact_payload
from subscriptions.models import MAX_ADDRESS_LENGTH, MAX_IDEMPOTENCY_KEY_LENGTH, Delivery, Subscription

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# During a rotation the previous secret keeps signing alongside the new one for this long.
ROTATION_OVERLAP = timedelta(hours=24)
MAX_TOPICS = 64
EVENTS_LIMIT_DEFAULT = 50
EVENTS_LIMIT_MAX = 500
EVENTS_CURSOR_SALT = "subscription_events"
REQUEUEABLE_ON_REDELIVER = (Delivery.Status.FAILED, Delivery.Status.DELIVERED)


def new_signing_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


# --- records -----------------------------------------------------------------------------------


def subscription_record(subscription: Subscription, *, with_secret: bool = False) -> dict[str, Any]:
    record = {
        "id": str(subscription.id),
        "subscriber_identity": subscription.subscriber_identity,
        "target": subscription.target or None,
        "target_kind": subscription.target_kind,
        "on_change": subscription.on_change,
        "delivery_address": subscription.delivery_address,
        "idempotency_key": subscription.idempotency_key or None,
        "topics": list(subscription.topics),
        "created_at": subscription.created_at.isoformat(),
        "last_delivered_at": subscription.last_delivered_at.isoformat() if subscription.last_delivered_at else None,
        "circuit_open": subscription.circuit != Subscription.Circuit.CLOSED,
        "consecutive_failures": subscription.consecutive_failures,
        "status": subscription.status,
    }
    if with_secret:
        record["signing_secret"] = subscription.signing_secret
    return record


def redacted_payload(fact_id: uuid.UUID | str) -> dict[str, Any]:
    return {"fact_id": str(fact_id), "redacted": True}


def event_record(delivery: Delivery, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "subscription_id": str(delivery.subscription_id),
        "event_type": delivery.event_type,
        "entity_uri": delivery.entity_uri or None,
        "fact_id": str(delivery.fact_id) if delivery.fact_id else None,
        "payload": payload,
        "created_at": delivery.created_at.isoformat(),
        "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
        "delivery_status": delivery.status,
        "delivery_attempts": delivery.attempts,
        "last_error": delivery.last_error or None,
    }


# --- create ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionRequest:
    """A validated create body, its target resolved."""

    target: str
    target_kind: str
    match_key: str
    on_change: str
    delivery_address: str
    idempotency_key: str
    topics: list[str]

    def dedup_key(self) -> str:
        # Normalized parts, so "Stigmem://X/user/A" and "stigmem://x/user/a" are one subscription.
        parts = [self.target_kind, self.match_key, self.on_change, self.delivery_address, sorted(self.topics)]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def _string(body: dict[str, Any], name: str, max_length: int, errors: list, *, required: bool) -> str:
    """A string field: "" when absent (or null) and optional; 422 entries otherwise."""
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > max_length:
        qualifier = "non-empty " if required else ""
        errors.append(
            field_error(
                ["body", name], f"{name} must be a {qualifier}string of at most {max_length} characters", "string_type"
            )
        )
        return ""
    if (problem := text_problem(value)) is not None:
        errors.append(field_error(["body", name], f"{name} {problem}", "string_unicode"))
        return ""
    return value


def _topics(body: dict[str, Any], errors: list) -> list[str]:
    raw = body.get("topics")
    if raw is None:
        return []
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TOPICS:
        errors.append(
            field_error(["body", "topics"], f"topics must be a list of 1 to {MAX_TOPICS} patterns", "list_length")
        )
        return []
    topics: list[str] = []
    for index, text in enumerate(raw):
        try:
            if isinstance(text, str) and text_problem(text) is not None:
                raise TopicError("a topic pattern must be valid Unicode without NUL characters")
            pattern = TopicPattern.parse(text)
        except TopicError as exc:
            errors.append(field_error(["body", "topics", index], str(exc), "topic_pattern"))
            continue
        if pattern.text not in topics:  # one pattern listed twice matches nothing more
            topics.append(pattern.text)
    return topics


def _delivery_address(body: dict[str, Any], on_change: str | None, errors: list) -> str:
    address = _string(body, "delivery_address", MAX_ADDRESS_LENGTH, errors, required=True)
    if address and on_change == Subscription.OnChange.WEBHOOK:
        try:
            ssrf.check_url(address)
        except ssrf.UnsafeUrl as exc:
            errors.append(field_error(["body", "delivery_address"], f"unsafe webhook URL: {exc}", "url_unsafe"))
            return ""
    return address


def _resolve_target(caller: Caller, target: str) -> tuple[str, str]:
    """``(target_kind, match_key)`` of a non-topic target: 404/403 for gardens, 400 for malformed entities."""
    stripped = target.strip()
    if stripped in SCOPES:
        return Subscription.Kind.SCOPE, stripped
    if parse_garden_uri(stripped) is not None:
        garden = garden_for_query(caller, stripped)  # 404 unknown, 403 not a member
        return Subscription.Kind.GARDEN, str(garden.id)
    try:
        return Subscription.Kind.ENTITY, normalize_uri(stripped).uri
    except UriInvalid as exc:
        raise coded(400, "invalid_entity_uri", str(exc)) from None


def parse_create_body(caller: Caller, body: Any) -> SubscriptionRequest:
    """Validate a ``POST /v1/subscriptions`` body: 422 for bad fields, then 400/403/404 for the target."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    errors: list = []
    on_change = body.get("on_change")
    if on_change not in Subscription.OnChange.values:
        errors.append(field_error(["body", "on_change"], "on_change must be one of webhook, wake", "literal_error"))
        on_change = None
    topics = _topics(body, errors)
    # With topics, a target is optional (kept as a label); without, it is what the subscription watches.
    topics_given = body.get("topics") is not None
    target = _string(body, "target", MAX_URI_LENGTH, errors, required=not topics_given)
    idempotency_key = _string(body, "idempotency_key", MAX_IDEMPOTENCY_KEY_LENGTH, errors, required=False)
    address = _delivery_address(body, on_change, errors)
    if errors:
        raise InputInvalid(errors)
    if topics:
        kind, match_key = Subscription.Kind.TOPICS, ""
    else:
        kind, match_key = _resolve_target(caller, target)
    return SubscriptionRequest(
        target=target,
        target_kind=kind,
        match_key=match_key,
        on_change=on_change,
        delivery_address=address,
        idempotency_key=idempotency_key,
        topics=topics,
    )


def _existing(caller: Caller, request: SubscriptionRequest) -> Subscription | None:
    owned = Subscription.objects.filter(tenant=caller.tenant, subscriber_identity=caller.entity_uri)
    if request.idempotency_key:
        found = owned.filter(idempotency_key=request.idempotency_key).first()
        if found is not None:
            return found
    return owned.filter(dedup_key=request.dedup_key()).first()


def create_subscription(caller: Caller, body: Any) -> tuple[Subscription, bool]:
    """Validate and create; ``(subscription, created)``. An existing duplicate is returned as is."""
    request = parse_create_body(caller, body)
    existing = _existing(caller, request)
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                tenant=caller.tenant,
                subscriber_identity=caller.entity_uri,
                target=request.target,
                target_kind=request.target_kind,
                match_key=request.match_key,
                topics=request.topics,
                on_change=request.on_change,
                delivery_address=request.delivery_address,
                idempotency_key=request.idempotency_key,
                dedup_key=request.dedup_key(),
                created_at=timezone.now(),
                signing_secret=new_signing_secret(),
            )
            _audit(
                subscription,
                "subscription_created",
                caller.entity_uri,
                {"target": request.target, "target_kind": request.target_kind, "on_change": request.on_change},
            )
    except IntegrityError:
        # A concurrent duplicate committed first: the unique constraints decide, and its row is the answer.
        existing = _existing(caller, request)
        if existing is None:
            raise
        return existing, False
    return subscription, True


def _audit(subscription: Subscription, event_type: str, actor: str, detail: dict[str, Any] | None = None) -> None:
    audit.record(
        subscription.tenant,
        event_type,
        actor=actor,
        target=str(subscription.id),
        detail={"subscriber_identity": subscription.subscriber_identity, **(detail or {})},
    )


# --- owned subscriptions -----------------------------------------------------------------------


def subscriptions_of(caller: Caller) -> QuerySet[Subscription]:
    """The caller's own subscriptions, newest first."""
    return Subscription.objects.filter(tenant=caller.tenant, subscriber_identity=caller.entity_uri).order_by(
        "-created_at", "-id"
    )


def _uuid_or_none(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        return None


def owned_subscription(caller: Caller, ref: str, *, for_update: bool = False) -> Subscription:
    """The caller's subscription with this id; 404 for anyone else's, another tenant's or a malformed id."""
    subscription_id = _uuid_or_none(ref)
    rows = Subscription.objects.filter(tenant=caller.tenant, subscriber_identity=caller.entity_uri)
    if for_update:
        rows = rows.select_for_update()
    found = rows.filter(id=subscription_id).first() if subscription_id else None
    if found is None:
        raise not_found("subscription")
    return found


def delete_subscription(caller: Caller, ref: str) -> None:
    """Delete one of the caller's subscriptions; its deliveries go with it."""
    with transaction.atomic():
        subscription = owned_subscription(caller, ref, for_update=True)
        _audit(subscription, "subscription_deleted", caller.entity_uri)
        subscription.delete()


def _locked(subscription: Subscription) -> Subscription:
    """The row re-read under a lock: delivery workers update failure counts concurrently."""
    return Subscription.objects.select_for_update().get(pk=subscription.pk)


def rotate_secret(subscription: Subscription, actor: str) -> str:
    """A new signing secret; the current one keeps signing alongside it for ``ROTATION_OVERLAP``.

    A second rotation within the overlap retires the oldest secret at once: only two are kept.
    """
    with transaction.atomic():
        row = _locked(subscription)
        row.previous_secret = row.signing_secret
        row.previous_secret_expires_at = timezone.now() + ROTATION_OVERLAP
        row.signing_secret = new_signing_secret()
        row.save(update_fields=["signing_secret", "previous_secret", "previous_secret_expires_at"])
        _audit(row, "subscription_secret_rotated", actor)
    return row.signing_secret


def pause(subscription: Subscription, actor: str) -> Subscription:
    """Stop sending: events keep queueing until resumed."""
    with transaction.atomic():
        row = _locked(subscription)
        if row.status != Subscription.Status.PAUSED:
            previous = row.status
            row.status = Subscription.Status.PAUSED
            row.save(update_fields=["status"])
            _audit(row, "subscription_paused", actor, {"previous_status": previous})
    return row


def _close_circuit(row: Subscription) -> list[str]:
    row.circuit = Subscription.Circuit.CLOSED
    row.circuit_retry_at = None
    row.circuit_cooldown_s = 0
    row.consecutive_failures = 0
    row.failing_since = None
    return ["circuit", "circuit_retry_at", "circuit_cooldown_s", "consecutive_failures", "failing_since"]


def resume(subscription: Subscription, actor: str) -> Subscription:
    """Send again. A ``disabled`` subscription is re-activated with its failure state reset."""
    with transaction.atomic():
        row = _locked(subscription)
        if row.status != Subscription.Status.ACTIVE:
            previous = row.status
            fields = ["status"]
            if previous == Subscription.Status.DISABLED:
                fields += _close_circuit(row)
            row.status = Subscription.Status.ACTIVE
            row.save(update_fields=fields)
            _audit(row, "subscription_resumed", actor, {"previous_status": previous})
    return row


def reset_circuit(subscription: Subscription, actor: str) -> Subscription:
    """Close the circuit and forget the failures (an operator's decision); the status is unchanged."""
    with transaction.atomic():
        row = _locked(subscription)
        row.save(update_fields=_close_circuit(row))
        _audit(row, "subscription_circuit_reset", actor)
    return row


# --- events: replay window, redeliver, recover -------------------------------------------------


@dataclass
class EventQuery:
    since: datetime | None = None
    after: tuple[datetime, uuid.UUID] | None = None
    limit: int = EVENTS_LIMIT_DEFAULT


@dataclass
class EventPage:
    events: list[dict[str, Any]]
    cursor: str | None


def _parse_since(raw: Any, loc: Sequence[str | int], errors: list) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError
        moment = parse_iso_datetime(raw)
    except ValueError:
        errors.append(field_error(loc, "since must be an ISO-8601 datetime", "datetime_parsing"))
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _bad_cursor() -> Exception:
    return coded(400, "cursor_invalid", "cursor is malformed or was not issued by this node")


def parse_event_query(params) -> EventQuery:
    """The replay query string: 422 for bad values, 400 ``cursor_invalid`` for a bad cursor."""
    errors: list = []
    query = EventQuery(since=_parse_since(params.get("since"), ["query", "since"], errors))
    query.limit = parse_limit(params, errors, default=EVENTS_LIMIT_DEFAULT, maximum=EVENTS_LIMIT_MAX)
    if errors:
        raise InputInvalid(errors)
    if params.get("cursor"):
        position = decode_cursor(EVENTS_CURSOR_SALT, params["cursor"])
        try:
            query.after = (datetime.fromisoformat(position["t"]), uuid.UUID(position["i"]))
        except (KeyError, TypeError, ValueError):
            raise _bad_cursor() from None
    return query


def _replay_payloads(caller: Caller, deliveries: list[Delivery]) -> dict[uuid.UUID, dict[str, Any]]:
    """Each event's payload as a delivery would render it now: fact events show the fact only while
    the caller may still see it (garden membership, tombstones; sanitizer applied), else a placeholder."""
    fact_ids = {delivery.fact_id for delivery in deliveries if delivery.fact_id}
    visible = {fact.id: fact for fact in visible_facts(caller).filter(id__in=fact_ids)} if fact_ids else {}
    payloads: dict[uuid.UUID, dict[str, Any]] = {}
    for delivery in deliveries:
        if delivery.fact_id is None:
            payloads[delivery.id] = delivery.payload or (delivery.event.payload if delivery.event_id else {})
        elif (fact := visible.get(delivery.fact_id)) is not None:
            payloads[delivery.id] = fact_payload(fact)
        else:
            payloads[delivery.id] = redacted_payload(delivery.fact_id)
    return payloads


def list_events(caller: Caller, subscription: Subscription, query: EventQuery) -> EventPage:
    """One page of the subscription's events within the replay window, oldest first (keyset on created_at, id)."""
    window_start = timezone.now() - timedelta(seconds=settings.STIGMEM_SUBSCRIPTION_REPLAY_S)
    since = max(window_start, query.since) if query.since else window_start
    rows = Delivery.objects.filter(subscription=subscription, created_at__gte=since).select_related("event")
    if query.after is not None:
        at, last_id = query.after
        rows = rows.filter(Q(created_at__gt=at) | Q(created_at=at, id__gt=last_id))
    page = list(rows.order_by("created_at", "id")[: query.limit + 1])
    cursor = None
    if len(page) > query.limit:
        page = page[: query.limit]
        cursor = encode_cursor(EVENTS_CURSOR_SALT, {"t": page[-1].created_at.isoformat(), "i": str(page[-1].id)})
    payloads = _replay_payloads(caller, page)
    return EventPage([event_record(delivery, payloads[delivery.id]) for delivery in page], cursor)


def _requeue(rows: QuerySet[Delivery]) -> int:
    """Make the rows due now; the delivery workers are kicked once the transaction commits."""
    count = rows.update(
        status=Delivery.Status.PENDING,
        next_attempt_at=timezone.now(),
        attempts=0,
        claimed_until=None,
        delivered_at=None,
    )
    if count:
        tasks.kick()
    return count


def redeliver(subscription: Subscription, event_ref: str, actor: str) -> int:
    """Queue one failed or delivered event again (same event id, so receivers can deduplicate).

    404 for an event of another subscription; 0 when it is already queued or being delivered.
    """
    event_id = _uuid_or_none(event_ref)
    deliveries = Delivery.objects.filter(subscription=subscription)
    if event_id is None or not deliveries.filter(id=event_id).exists():
        raise not_found("event")
    with transaction.atomic():
        count = _requeue(deliveries.filter(id=event_id, status__in=REQUEUEABLE_ON_REDELIVER))
        if count:
            _audit(subscription, "subscription_event_redelivered", actor, {"event_id": str(event_id)})
    return count


def parse_recover_body(body: Any) -> datetime | None:
    """``{"since": iso}`` (optional; without it every failed event is recovered)."""
    if body is None or body == "":
        return None
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    errors: list = []
    since = _parse_since(body.get("since"), ["body", "since"], errors)
    if errors:
        raise InputInvalid(errors)
    return since


def recover(subscription: Subscription, since: datetime | None, actor: str) -> int:
    """Queue again every failed (dead-lettered) event of the subscription created at or after ``since``."""
    rows = Delivery.objects.filter(subscription=subscription, status=Delivery.Status.FAILED)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    with transaction.atomic():
        count = _requeue(rows)
        if count:
            _audit(
                subscription,
                "subscription_recovered",
                actor,
                {"since": since.isoformat() if since else None, "requeued": count},
            )
    return count


# --- test events -------------------------------------------------------------------------------

TEST_EVENT_TYPE = "test"
TEST_TOPIC = "subscription.test"


def send_test_event(subscription: Subscription, actor: str) -> Delivery:
    """Queue one ``test`` event for the subscription and kick the workers.

    It is an ordinary delivery (signed, retried, replayable), so it checks the whole path to the
    receiver. A paused or disabled subscription keeps it queued until resumed, like any event.
    """
    now = timezone.now()
    with transaction.atomic():
        delivery = Delivery.objects.create(
            subscription=subscription,
            tenant=subscription.tenant,
            event_type=TEST_EVENT_TYPE,
            topic=TEST_TOPIC,
            payload={"test": True, "sent_by": actor},
            created_at=now,
            next_attempt_at=now,
        )
        _audit(subscription, "subscription_test_event_sent", actor, {"event_id": str(delivery.id)})
        tasks.kick()
    return delivery
