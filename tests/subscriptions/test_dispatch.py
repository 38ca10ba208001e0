"""Dispatch: the fact log and the Event log matched to subscriptions (DESIGN.md §3, §6; WIRE.md §5.2).

Facts and events are written through the core's write paths; the registered consumers are run
through ``logtail.run_consumers()``, and the resulting Delivery rows and cursors are asserted.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from stigmem import events, logtail
from stigmem.fact_input import parse_fact_body
from stigmem.facts import Origin, assert_facts
from stigmem.models import ConsumerCursor, Event, Fact, Garden, GardenMember
from subscriptions import dispatch, tasks
from subscriptions.models import Delivery, Subscription

ALICE = "stigmem://test/agent/alice"
BOB = "stigmem://test/agent/bob"
ENTITY = "stigmem://test/user/u1"
WRITER = "stigmem://test/agent/writer"


@pytest.fixture(autouse=True)
def _fresh(db):
    # Each test's database starts without subscriptions: no index cached by an earlier test applies.
    dispatch.clear_cache()
    yield
    dispatch.clear_cache()


_created = [timezone.now() - timedelta(days=1)]


def subscribe(kind: str, key: str = "", *, tenant: str = "default", who: str = ALICE, **fields) -> Subscription:
    # Strictly increasing creation times, as the API's clock gives them.
    _created[0] += timedelta(seconds=1)
    return Subscription.objects.create(
        tenant=tenant,
        subscriber_identity=who,
        target=key,
        target_kind=kind,
        match_key=key,
        on_change=Subscription.OnChange.WEBHOOK,
        delivery_address="https://hooks.example.com/in",
        created_at=_created[0],
        signing_secret="whsec_dGVzdA==",
        **fields,
    )


def topics(*patterns: str, **fields) -> Subscription:
    return subscribe(Subscription.Kind.TOPICS, topics=list(patterns), **fields)


def fact_input(n: int = 1, *, entity: str = ENTITY, scope: str = "local", confidence: float = 1.0, garden: str = ""):
    item = parse_fact_body(
        {
            "entity": entity,
            "relation": "memory:n",
            "value": {"type": "number", "v": n},
            "source": WRITER,
            "scope": scope,
            "confidence": confidence,
        }
    )
    item.garden = garden  # what facts.authorize resolves a garden URI into
    return item


def write(*items, tenant: str = "default", origin: Origin = Origin.LOCAL) -> list[Fact]:
    return [outcome.fact for outcome in assert_facts(tenant, list(items), origin=origin)]


def run() -> None:
    logtail.run_consumers()


def delivered(subscription: Subscription) -> list[tuple]:
    return sorted(
        Delivery.objects.filter(subscription=subscription).values_list("event_type", "topic", "fact_id", "event_id")
    )


def cursor(log: str) -> int:
    row = ConsumerCursor.objects.filter(consumer=dispatch.CONSUMER, log=log).first()
    return row.position if row else 0


def garden(slug: str, *members: str, tenant: str = "default") -> str:
    created = Garden.objects.create(
        tenant=tenant, slug=slug, name=slug, scope="team", created_by=ALICE, created_at=timezone.now()
    )
    for who in members:
        GardenMember.objects.create(garden=created, entity_uri=who, added_by=ALICE, added_at=timezone.now())
    return str(created.id)


def test_both_consumers_are_registered_at_startup():
    registered = {(c.name, c.log) for c in logtail.consumers()}
    assert (dispatch.CONSUMER, ConsumerCursor.Log.FACTS) in registered
    assert (dispatch.CONSUMER, ConsumerCursor.Log.EVENTS) in registered


# --- fact targets -----------------------------------------------------------------------------


def test_scope_entity_and_garden_targets_get_fact_asserted():
    garden_id = garden("research", ALICE)
    by_scope = subscribe(Subscription.Kind.SCOPE, "team")
    by_entity = subscribe(Subscription.Kind.ENTITY, ENTITY)
    by_garden = subscribe(Subscription.Kind.GARDEN, garden_id)
    other_scope = subscribe(Subscription.Kind.SCOPE, "company")
    other_entity = subscribe(Subscription.Kind.ENTITY, "stigmem://test/user/other")

    plain, in_garden = write(fact_input(1, scope="team"), fact_input(2, scope="team", garden=garden_id))
    run()

    assert delivered(by_scope) == sorted(
        [("fact_asserted", "fact.asserted", plain.id, None), ("fact_asserted", "fact.asserted", in_garden.id, None)]
    )
    assert delivered(by_entity) == delivered(by_scope)
    assert delivered(by_garden) == [("fact_asserted", "fact.asserted", in_garden.id, None)]
    assert delivered(other_scope) == delivered(other_entity) == []
    row = Delivery.objects.get(subscription=by_entity, fact=plain)
    assert (row.tenant, row.entity_uri, row.status, row.attempts, row.payload) == (
        "default",
        ENTITY,
        Delivery.Status.PENDING,
        0,
        {},
    )
    assert row.next_attempt_at == row.created_at
    assert cursor(ConsumerCursor.Log.FACTS) == in_garden.seq


def test_one_delivery_per_subscription_per_fact_and_in_log_order():
    subscription = subscribe(Subscription.Kind.ENTITY, ENTITY)
    facts = write(*(fact_input(n) for n in range(5)))
    run()

    rows = list(Delivery.objects.filter(subscription=subscription).order_by("created_at"))
    assert [row.fact_id for row in rows] == [fact.id for fact in facts]


def test_other_tenants_are_never_matched():
    mine = subscribe(Subscription.Kind.ENTITY, ENTITY)
    theirs = subscribe(Subscription.Kind.ENTITY, ENTITY, tenant="acme")
    their_scope = subscribe(Subscription.Kind.SCOPE, "local", tenant="acme")
    their_topics = topics(">", tenant="acme")

    (fact,) = write(fact_input())
    events.publish("default", events.CONFLICT_DETECTED, {"conflict_id": "c1"})
    run()

    assert delivered(mine) == [("fact_asserted", "fact.asserted", fact.id, None)]
    assert delivered(theirs) == delivered(their_scope) == delivered(their_topics) == []


def test_disabled_subscriptions_get_nothing_paused_and_open_circuits_queue():
    disabled = subscribe(Subscription.Kind.ENTITY, ENTITY, status=Subscription.Status.DISABLED)
    disabled_topics = topics("fact.>", status=Subscription.Status.DISABLED)
    paused = subscribe(Subscription.Kind.ENTITY, ENTITY, status=Subscription.Status.PAUSED)
    open_circuit = subscribe(Subscription.Kind.SCOPE, "local", circuit=Subscription.Circuit.OPEN)
    paused_topics = topics("conflict.*", status=Subscription.Status.PAUSED)

    (fact,) = write(fact_input())
    event = events.publish("default", events.CONFLICT_DETECTED, {"conflict_id": "c1"})
    run()

    assert delivered(disabled) == delivered(disabled_topics) == []
    assert delivered(paused) == delivered(open_circuit) == [("fact_asserted", "fact.asserted", fact.id, None)]
    assert delivered(paused_topics) == [("conflict_detected", "conflict.detected", None, event.seq)]
    assert set(Delivery.objects.values_list("status", flat=True)) == {Delivery.Status.PENDING}


def test_a_retraction_is_not_fact_asserted_but_reaches_fact_retracted_topics():
    by_entity = subscribe(Subscription.Kind.ENTITY, ENTITY)
    by_scope = subscribe(Subscription.Kind.SCOPE, "local")
    on_retracted = topics("fact.retracted")
    on_asserted = topics("fact.asserted")

    (value,) = write(fact_input(1))
    (retraction,) = write(fact_input(1, confidence=0.0))
    run()

    assert delivered(by_entity) == delivered(by_scope) == [("fact_asserted", "fact.asserted", value.id, None)]
    assert delivered(on_asserted) == [("fact_asserted", "fact.asserted", value.id, None)]
    assert delivered(on_retracted) == [("fact_retracted", "fact.retracted", retraction.id, None)]


def test_a_reasserted_fact_is_not_a_new_event():
    subscription = subscribe(Subscription.Kind.ENTITY, ENTITY)
    (first,) = write(fact_input(1))
    run()
    (again,) = write(fact_input(1))
    run()

    assert again.id == first.id
    assert delivered(subscription) == [("fact_asserted", "fact.asserted", first.id, None)]


@pytest.mark.parametrize("origin", [Origin.FEDERATION, Origin.RULE])
def test_federated_and_rule_emitted_facts_are_dispatched(origin):
    subscription = subscribe(Subscription.Kind.ENTITY, ENTITY)
    (fact,) = write(fact_input(), origin=origin)
    run()

    assert delivered(subscription) == [("fact_asserted", "fact.asserted", fact.id, None)]


# --- gardens ----------------------------------------------------------------------------------


def test_garden_facts_reach_members_only():
    garden_id = garden("research", ALICE)
    member_by_scope = subscribe(Subscription.Kind.SCOPE, "team", who=ALICE)
    outsider_by_scope = subscribe(Subscription.Kind.SCOPE, "team", who=BOB)
    outsider_by_entity = subscribe(Subscription.Kind.ENTITY, ENTITY, who=BOB)
    outsider_by_topics = topics("fact.asserted", who=BOB)
    # Bob left the garden after subscribing to it: no new deliveries either.
    former_member_by_garden = subscribe(Subscription.Kind.GARDEN, garden_id, who=BOB)

    plain, in_garden = write(fact_input(1, scope="team"), fact_input(2, scope="team", garden=garden_id))
    run()

    assert delivered(member_by_scope) == sorted(
        [("fact_asserted", "fact.asserted", plain.id, None), ("fact_asserted", "fact.asserted", in_garden.id, None)]
    )
    only_plain = [("fact_asserted", "fact.asserted", plain.id, None)]
    assert delivered(outsider_by_scope) == delivered(outsider_by_entity) == delivered(outsider_by_topics) == only_plain
    assert delivered(former_member_by_garden) == []


def test_membership_of_another_garden_does_not_count():
    garden_id = garden("research", ALICE)
    garden("other", BOB)
    outsider = subscribe(Subscription.Kind.ENTITY, ENTITY, who=BOB)

    write(fact_input(1, scope="team", garden=garden_id))
    run()

    assert delivered(outsider) == []


# --- node events and topic subscriptions ------------------------------------------------------


def test_topic_subscriptions_match_node_events():
    conflicts = topics("conflict.*")
    fired = topics("ttp.rule.fired.>")
    exact = topics("ttp.rule.fired.T1059")
    unrelated = topics("peer.status.*")

    detected = events.publish("default", events.CONFLICT_DETECTED, {"conflict_id": "c1", "entity": ENTITY})
    rule = events.publish("default", events.ttp_rule_fired("T1059"), {"rule_id": "r1"})
    run()

    assert delivered(conflicts) == [("conflict_detected", "conflict.detected", None, detected.seq)]
    assert delivered(fired) == delivered(exact) == [("ttp_rule_fired_T1059", "ttp.rule.fired.T1059", None, rule.seq)]
    assert delivered(unrelated) == []
    row = Delivery.objects.get(subscription=conflicts)
    assert (row.payload, row.entity_uri, row.tenant) == ({"conflict_id": "c1", "entity": ENTITY}, ENTITY, "default")
    assert cursor(ConsumerCursor.Log.EVENTS) == rule.seq


def test_one_delivery_per_subscription_when_several_patterns_match():
    subscription = topics("conflict.detected", "conflict.*", ">", "conflict.>")
    (fact,) = write(fact_input())
    event = events.publish("default", events.CONFLICT_DETECTED, {"conflict_id": "c1"})
    run()

    assert delivered(subscription) == sorted(
        [("fact_asserted", "fact.asserted", fact.id, None), ("conflict_detected", "conflict.detected", None, event.seq)]
    )


def test_topic_subscriptions_also_get_fact_asserted():
    wildcard = topics("fact.>")
    not_facts = topics("conflict.>")
    (fact,) = write(fact_input())
    run()

    assert delivered(wildcard) == [("fact_asserted", "fact.asserted", fact.id, None)]
    assert delivered(not_facts) == []


def test_the_pattern_cache_sees_new_deleted_and_disabled_subscriptions():
    first = topics("conflict.*")
    events.publish("default", events.CONFLICT_DETECTED, {"n": 1})
    run()  # builds and caches the tenant's index
    assert len(delivered(first)) == 1

    second = topics("conflict.detected")
    first.status = Subscription.Status.DISABLED
    first.save()
    event = events.publish("default", events.CONFLICT_DETECTED, {"n": 2})
    run()
    assert len(delivered(first)) == 1
    assert delivered(second) == [("conflict_detected", "conflict.detected", None, event.seq)]

    # A new subscription and a deleted one between two batches: the count alone would not change.
    second.delete()
    third = topics("conflict.>")
    event = events.publish("default", events.CONFLICT_DETECTED, {"n": 3})
    run()
    assert delivered(third) == [("conflict_detected", "conflict.detected", None, event.seq)]
    assert Delivery.objects.filter(event=event).count() == 1


def test_an_invalid_stored_pattern_does_not_stall_dispatch():
    broken = topics("a.>.b", "conflict.detected")
    event = events.publish("default", events.CONFLICT_DETECTED, {"n": 1})
    run()

    assert delivered(broken) == [("conflict_detected", "conflict.detected", None, event.seq)]
    assert cursor(ConsumerCursor.Log.EVENTS) == event.seq


# --- crash safety and idempotency -------------------------------------------------------------


def test_a_batch_handed_over_again_adds_nothing():
    by_entity = subscribe(Subscription.Kind.ENTITY, ENTITY)
    by_topics = topics(">")
    write(fact_input(1), fact_input(2))
    events.publish("default", events.CONFLICT_DETECTED, {"n": 1})
    run()
    before = sorted(Delivery.objects.values_list("id", "subscription_id", "fact_id", "event_id"))
    assert len(before) == 5  # two facts to each subscription, the event to the topic one

    ConsumerCursor.objects.filter(consumer=dispatch.CONSUMER).update(position=0)
    run()

    assert sorted(Delivery.objects.values_list("id", "subscription_id", "fact_id", "event_id")) == before
    assert {by_entity.id, by_topics.id} == set(Delivery.objects.values_list("subscription_id", flat=True))


def test_a_crash_mid_batch_writes_nothing_and_keeps_the_cursor(monkeypatch):
    subscribe(Subscription.Kind.ENTITY, ENTITY)
    topics("fact.asserted")
    write(fact_input(1), fact_input(2))

    def crash(tenant):
        raise RuntimeError("worker died")

    # The topic index is read after the scope/entity/garden subscriptions were matched.
    real_topic_index = dispatch._topic_index
    monkeypatch.setattr(dispatch, "_topic_index", crash)
    run()
    assert Delivery.objects.count() == 0
    assert cursor(ConsumerCursor.Log.FACTS) == 0

    monkeypatch.setattr(dispatch, "_topic_index", real_topic_index)
    run()
    assert Delivery.objects.count() == 4
    assert cursor(ConsumerCursor.Log.FACTS) == Fact.objects.order_by("-seq").first().seq


def test_a_failed_insert_rolls_the_whole_batch_back(monkeypatch):
    subscribe(Subscription.Kind.ENTITY, ENTITY)
    write(*(fact_input(n) for n in range(3)))
    real_bulk_create = Delivery.objects.bulk_create

    def bulk_create_then_crash(rows, **kwargs):
        real_bulk_create(rows[:1], **kwargs)
        raise RuntimeError("connection lost")

    monkeypatch.setattr(Delivery.objects, "bulk_create", bulk_create_then_crash)
    run()
    assert Delivery.objects.count() == 0
    assert cursor(ConsumerCursor.Log.FACTS) == 0


def test_nothing_to_dispatch_still_advances_the_cursors():
    subscribe(Subscription.Kind.ENTITY, "stigmem://test/user/nobody")
    (fact,) = write(fact_input())
    event = events.publish("default", events.TTP_TAGGED, {"n": 1})
    run()

    assert Delivery.objects.count() == 0
    assert cursor(ConsumerCursor.Log.FACTS) == fact.seq
    assert cursor(ConsumerCursor.Log.EVENTS) == event.seq
    assert Event.objects.count() == 1


def test_events_of_tenants_without_a_receiving_topic_subscription_are_passed_over_unread():
    subscribe(Subscription.Kind.ENTITY, ENTITY)  # a fact subscription: no event can match it
    topics(">", status=Subscription.Status.DISABLED)  # disabled: receives nothing
    topics(">", tenant="other")  # another tenant's
    published = [events.publish("default", events.FACT_EXPIRED, {"n": n}) for n in range(3 * dispatch.BATCH_SIZE)]
    consumer = next(c for c in logtail.consumers() if c.name == dispatch.CONSUMER and c.log == "events")

    # One batch passes the whole backlog (three batches' worth), handing no row to the handler.
    assert logtail.run_batch(consumer) == 0
    assert cursor(ConsumerCursor.Log.EVENTS) == published[-1].seq
    assert Delivery.objects.count() == 0

    # A tenant's events are read again once it has a topic subscription.
    everything = topics(">")
    later = events.publish("default", events.FACT_EXPIRED, {"n": "later"})
    run()
    assert [row[-1] for row in delivered(everything)] == [later.seq]


def test_facts_of_tenants_without_a_receiving_subscription_are_passed_over_unread():
    subscribe(Subscription.Kind.SCOPE, "local", tenant="other")  # another tenant's
    subscribe(Subscription.Kind.SCOPE, "local", status=Subscription.Status.DISABLED)
    facts = write(*[fact_input(n) for n in range(2 * dispatch.BATCH_SIZE + 1)])
    consumer = next(c for c in logtail.consumers() if c.name == dispatch.CONSUMER and c.log == "facts")

    assert logtail.run_batch(consumer) == 0  # one pass over three batches' worth
    assert cursor(ConsumerCursor.Log.FACTS) == facts[-1].seq
    assert Delivery.objects.count() == 0

    local = subscribe(Subscription.Kind.SCOPE, "local")
    (later,) = write(fact_input(-1))
    run()
    assert [row[2] for row in delivered(local)] == [later.id]


def test_a_subscription_deleted_before_dispatch_gets_nothing():
    gone = topics(">")
    gone_id = gone.id
    events.publish("default", events.CONFLICT_DETECTED, {"n": 1})
    run()  # cache the index with the subscription in it
    gone.delete()
    events.publish("default", events.CONFLICT_DETECTED, {"n": 2})
    write(fact_input())
    run()

    assert not Delivery.objects.filter(subscription_id=gone_id).exists()
    assert cursor(ConsumerCursor.Log.EVENTS) == Event.objects.order_by("-seq").first().seq


def test_the_delivery_workers_are_kicked_only_when_deliveries_were_queued(monkeypatch):
    kicks = []
    monkeypatch.setattr(tasks, "kick", lambda: kicks.append(1))
    subscribe(Subscription.Kind.ENTITY, ENTITY)

    write(fact_input(1, entity="stigmem://test/user/nobody"))
    run()
    assert kicks == []

    write(fact_input(2))
    run()
    assert kicks == [1]
