"""Dispatch: match the fact log and the Event log to subscriptions (DESIGN.md §3, §6; WIRE.md §5.2).

Two log consumers named ``subscriptions.dispatch`` turn each batch of new rows into ``Delivery``
rows, in the transaction that advances their cursors: a crash loses or repeats nothing, and the
partial unique constraints on (subscription, fact) / (subscription, event) make a replayed batch
a no-op.

What matches what:

- A new fact with confidence > 0 (local, federated or rule-emitted alike) is ``fact_asserted`` /
  ``fact.asserted`` for scope, entity and garden subscriptions whose ``match_key`` is the fact's
  scope, entity or garden id, and for topic subscriptions with a pattern matching
  ``fact.asserted`` (facts are their own log, so the Event log never carries that topic).
- A retraction (confidence 0) is not a new current value: scope, entity and garden subscriptions
  get nothing (the reference never sends one), topic subscriptions matching ``fact.retracted`` get
  a ``fact_retracted`` delivery, so that documented topic is live.
- A node event goes to the topic subscriptions with a pattern matching its topic; its
  ``event_type`` is the topic with dots as underscores (``conflict.detected`` ->
  ``conflict_detected``), like ``fact.asserted`` -> ``fact_asserted``.

Always within the row's tenant, one delivery per subscription per row however many patterns
match. Paused subscriptions and open circuits still get their deliveries (queued, never
dropped); disabled ones get none. A fact in a garden is dispatched only to subscribers who are
members of that garden now; everything else about visibility (membership changes, tombstones,
revoked keys, the sanitizer) is checked again by the delivery engine when it sends, failing closed.

Cost: the rows of tenants with no receiving subscription (for events: no topic subscription)
are passed over without being read (logtail's ``wanted``). Scope/entity/garden matching is one
query per target kind per tenant in the batch on the ``subscription_match`` index; topic
matching walks a per-process ``PatternIndex`` trie, rebuilt only when the tenant's set of topic
subscriptions changes.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Q
from django.utils import timezone
from prometheus_client import Counter

from stigmem import events, logtail
from stigmem.events import PatternIndex, TopicError, TopicPattern
from stigmem.models import ConsumerCursor, Event, Fact, GardenMember
from subscriptions import tasks
from subscriptions.models import Delivery, Subscription

logger = logging.getLogger(__name__)

CONSUMER = "subscriptions.dispatch"
BATCH_SIZE = 500
# What matching an event needs; payloads are fetched for the matched events only.
EVENT_COLUMNS = ("seq", "tenant", "topic")
FACT_ASSERTED = "fact_asserted"
FACT_RETRACTED = "fact_retracted"
# Subscriptions that receive deliveries: paused ones queue them until resumed.
RECEIVING = (Subscription.Status.ACTIVE, Subscription.Status.PAUSED)
# Bound on the values of one IN (...) list: SQLite caps the number of query parameters.
_IN_CHUNK = 500

DISPATCHED = Counter(
    "stigmem_subscription_deliveries_dispatched", "Deliveries queued by dispatch, by the log they came from", ["log"]
)


def register() -> None:
    """Tail both logs (called from SubscriptionsConfig.ready())."""
    logtail.register(CONSUMER, ConsumerCursor.Log.FACTS, dispatch_facts, BATCH_SIZE, wanted=_subscribed_tenants)
    # Most node events concern no topic subscription: their payloads are read only for those that do,
    # and the events of tenants without one are not read at all.
    logtail.register(
        CONSUMER, ConsumerCursor.Log.EVENTS, dispatch_events, BATCH_SIZE, only=EVENT_COLUMNS, wanted=_topic_tenants
    )


def _subscribed_tenants() -> Q:
    """Facts of tenants with a receiving subscription of any kind: only those can match one."""
    return Q(tenant__in=Subscription.objects.filter(status__in=RECEIVING).values("tenant"))


def _topic_tenants() -> Q:
    """Events of tenants with a receiving topic subscription: only those can match one."""
    subscribed = Subscription.objects.filter(target_kind=Subscription.Kind.TOPICS, status__in=RECEIVING)
    return Q(tenant__in=subscribed.values("tenant"))


def dispatch_facts(rows: Sequence[Fact]) -> None:
    """Queue the deliveries for a batch of facts, in seq order (runs in the cursor's transaction)."""
    now = timezone.now()
    deliveries: list[Delivery] = []
    for tenant, facts in _by_tenant(rows):
        deliveries.extend(_fact_deliveries(tenant, facts, now))
    _queue(deliveries, ConsumerCursor.Log.FACTS)


def dispatch_events(rows: Sequence[Event]) -> None:
    """Queue the deliveries for a batch of node events, in seq order (runs in the cursor's transaction)."""
    now = timezone.now()
    deliveries: list[Delivery] = []
    for tenant, tenant_events in _by_tenant(rows):
        deliveries.extend(_event_deliveries(tenant, tenant_events, now))
    _queue(deliveries, ConsumerCursor.Log.EVENTS)


# --- facts ------------------------------------------------------------------------------------


def _fact_deliveries(tenant: str, facts: list[tuple[int, Fact]], now: datetime) -> list[Delivery]:
    asserted = [fact for _, fact in facts if fact.confidence > 0]
    by_target = _target_subscribers(tenant, asserted)
    topic_index = _topic_index(tenant)
    on_asserted = _receiving(topic_index.match(events.FACT_ASSERTED)) if asserted else {}
    on_retracted = _receiving(topic_index.match(events.FACT_RETRACTED)) if len(asserted) < len(facts) else {}

    matched: list[tuple[int, Fact, dict[uuid.UUID, str]]] = []
    for position, fact in facts:
        if fact.confidence > 0:
            subscribers = dict(on_asserted)
            subscribers.update(by_target.get((Subscription.Kind.SCOPE, fact.scope), {}))
            subscribers.update(by_target.get((Subscription.Kind.ENTITY, fact.entity), {}))
            if fact.garden:
                subscribers.update(by_target.get((Subscription.Kind.GARDEN, fact.garden), {}))
        else:
            subscribers = on_retracted
        if subscribers:
            matched.append((position, fact, subscribers))

    members = _garden_members(
        {fact.garden for _, fact, _ in matched if fact.garden},
        {who for _, fact, subscribers in matched if fact.garden for who in subscribers.values()},
    )
    deliveries = []
    for position, fact, subscribers in matched:
        event_type, topic = (
            (FACT_ASSERTED, events.FACT_ASSERTED) if fact.confidence > 0 else (FACT_RETRACTED, events.FACT_RETRACTED)
        )
        for subscription_id, subscriber in subscribers.items():
            if fact.garden and (fact.garden, subscriber) not in members:
                continue
            deliveries.append(
                _delivery(
                    subscription_id, tenant, event_type, topic, _at(now, position), fact=fact, entity_uri=fact.entity
                )
            )
    return deliveries


def _target_subscribers(tenant: str, facts: list[Fact]) -> dict[tuple[str, str], dict[uuid.UUID, str]]:
    """Receiving scope/entity/garden subscriptions for these facts' keys: (kind, key) -> {id: subscriber}."""
    keys = {
        Subscription.Kind.SCOPE: {fact.scope for fact in facts},
        Subscription.Kind.ENTITY: {fact.entity for fact in facts},
        Subscription.Kind.GARDEN: {fact.garden for fact in facts if fact.garden},
    }
    found: dict[tuple[str, str], dict[uuid.UUID, str]] = defaultdict(dict)
    for kind, values in keys.items():
        for chunk in _chunks(values):
            # One range scan of the (tenant, target_kind, match_key) index per kind and chunk:
            # the cost follows the matching subscriptions, not how many exist.
            rows = Subscription.objects.filter(
                tenant=tenant, target_kind=kind, match_key__in=chunk, status__in=RECEIVING
            ).values_list("id", "match_key", "subscriber_identity")
            for subscription_id, match_key, subscriber in rows:
                found[(kind, match_key)][subscription_id] = subscriber
    return found


def _garden_members(gardens: set[str], subscribers: set[str]) -> set[tuple[str, str]]:
    """(garden id, entity URI) pairs among these that are memberships now (one query per 500 subscribers)."""
    garden_ids = [garden_id for garden_id in map(_as_uuid, gardens) if garden_id is not None]
    if not garden_ids or not subscribers:
        return set()
    found = set()
    for chunk in _chunks(subscribers):
        rows = GardenMember.objects.filter(garden_id__in=garden_ids, entity_uri__in=chunk).values_list(
            "garden_id", "entity_uri"
        )
        found.update((str(garden_id), entity_uri) for garden_id, entity_uri in rows)
    return found


def _as_uuid(value: str) -> uuid.UUID | None:
    # A malformed garden column must not stall the cursor: such a fact reaches no garden member.
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


# --- node events ------------------------------------------------------------------------------


def _event_deliveries(tenant: str, tenant_events: list[tuple[int, Event]], now: datetime) -> list[Delivery]:
    topic_index = _topic_index(tenant)
    candidates = {position: topic_index.match(event.topic) for position, event in tenant_events}
    receiving = _receiving(set().union(*candidates.values()))
    wanted = [event.seq for position, event in tenant_events if candidates[position] & receiving.keys()]
    payloads = _payloads(wanted)
    deliveries = []
    for position, event in tenant_events:
        for subscription_id in candidates[position]:
            if subscription_id not in receiving:
                continue
            payload = payloads.get(event.seq)
            entity = payload.get("entity") if isinstance(payload, dict) else None
            deliveries.append(
                _delivery(
                    subscription_id,
                    tenant,
                    _event_type(event.topic),
                    event.topic,
                    _at(now, position),
                    event=event,
                    entity_uri=entity if isinstance(entity, str) else "",
                    payload=payload if isinstance(payload, dict) else {"value": payload},
                )
            )
    return deliveries


def _payloads(seqs: list[int]) -> dict[int, Any]:
    """The payloads of these events (the batch was loaded without them)."""
    found: dict[int, Any] = {}
    for chunk in _chunks(seqs):
        found.update(Event.objects.filter(seq__in=chunk).values_list("seq", "payload"))
    return found


def _event_type(topic: str) -> str:
    return topic.replace(".", "_")[: Delivery._meta.get_field("event_type").max_length]


# --- topic subscriptions ----------------------------------------------------------------------


@dataclass(frozen=True)
class _TopicIndex:
    """A tenant's topic subscriptions as a trie, and the state of the table it was built from."""

    version: tuple[int, datetime | None]
    index: PatternIndex

    def match(self, topic: str) -> set[uuid.UUID]:
        return self.index.match(topic)  # type: ignore[return-value]


_topic_indexes: dict[str, _TopicIndex] = {}


def clear_cache() -> None:
    """Forget every cached pattern index (tests; each is otherwise rebuilt when it goes stale)."""
    _topic_indexes.clear()


def _topic_index(tenant: str) -> _TopicIndex:
    """The tenant's pattern trie, rebuilt when a topic subscription was created or deleted.

    Topics are fixed at creation, so (count, newest created_at) changes exactly when the set of
    subscriptions does; status changes need no rebuild, ``_receiving`` reads them per batch.
    """
    topic_subscriptions = Subscription.objects.filter(tenant=tenant, target_kind=Subscription.Kind.TOPICS)
    stats = topic_subscriptions.aggregate(count=Count("id"), newest=Max("created_at"))
    version = (stats["count"], stats["newest"])
    cached = _topic_indexes.get(tenant)
    if cached is not None and cached.version == version:
        return cached
    index = PatternIndex()
    for subscription_id, patterns in topic_subscriptions.values_list("id", "topics"):
        for text in patterns if isinstance(patterns, list) else []:
            try:
                index.add(TopicPattern.parse(text), subscription_id)
            except TopicError:  # validated on create; a bad row must not stall dispatch
                logger.warning("subscription %s has an invalid topic pattern %r; ignored", subscription_id, text)
    cached = _TopicIndex(version, index)
    _topic_indexes[tenant] = cached
    return cached


def _receiving(subscription_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Those of these subscriptions that exist and receive deliveries now: {id: subscriber}."""
    found: dict[uuid.UUID, str] = {}
    for chunk in _chunks(subscription_ids):
        found.update(
            Subscription.objects.filter(id__in=chunk, status__in=RECEIVING).values_list("id", "subscriber_identity")
        )
    return found


# --- writing ----------------------------------------------------------------------------------


def _delivery(
    subscription_id: uuid.UUID,
    tenant: str,
    event_type: str,
    topic: str,
    at: datetime,
    *,
    fact: Fact | None = None,
    event: Event | None = None,
    entity_uri: str = "",
    payload: dict[str, Any] | None = None,
) -> Delivery:
    # Fact deliveries store no copy of the fact: the engine renders it for the subscriber when it
    # sends (sanitizer, visibility), so nothing stale or unchecked sits in the outbox.
    return Delivery(
        subscription_id=subscription_id,
        tenant=tenant,
        event_type=event_type,
        topic=topic,
        fact=fact,
        event=event,
        entity_uri=entity_uri,
        payload=payload or {},
        created_at=at,
        next_attempt_at=at,
    )


def _at(now: datetime, position: int) -> datetime:
    # One microsecond per log row keeps ``created_at`` in log order within a batch, so a queue
    # drained by (next_attempt_at, created_at) sends each subscription its events in seq order.
    return now + timedelta(microseconds=position)


def _queue(deliveries: list[Delivery], log: str) -> None:
    if not deliveries:
        return
    # ignore_conflicts: a batch handed over again (a cursor reset by an operator) adds nothing;
    # the partial unique constraints decide, on both databases.
    Delivery.objects.bulk_create(deliveries, batch_size=500, ignore_conflicts=True)
    DISPATCHED.labels(log=log).inc(len(deliveries))
    # The delivery workers start once this batch (and the cursor with it) has committed.
    tasks.kick()


# --- helpers ----------------------------------------------------------------------------------


def _by_tenant(rows: Sequence[Fact] | Sequence[Event]) -> Iterator[tuple[str, list[tuple[int, Any]]]]:
    """Rows grouped by tenant, each with its position in the batch (log order preserved)."""
    grouped: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for position, row in enumerate(rows):
        grouped[row.tenant].append((position, row))
    return iter(grouped.items())


def _chunks(values: Iterable, size: int = _IN_CHUNK) -> Iterator[list]:
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start : start + size]
