"""The subscription resource (WIRE.md §5.1) through the HTTP API: shapes, ownership, bad input, replay."""

from __future__ import annotations

import base64
import socket
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from stigmem.auth import Caller
from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts, authorize
from stigmem.gardens import create_garden_from_body
from stigmem.keys import issue_key
from stigmem.models import AuditEvent, Fact
from stigmem.node import node_authority
from stigmem.tombstones import create_tombstone
from subscriptions.models import Delivery, Subscription

ME = "stigmem://test/agent/tester"
OTHER = "stigmem://test/agent/other"
HOOK = "https://hooks.example.com/in"
URL = "/v1/subscriptions"

PUBLIC_DNS = {"hooks.example.com": ["93.184.215.14"], "other.example.com": ["93.184.215.15"]}
PRIVATE_DNS = {
    "internal.example.com": ["10.0.0.5"],
    "metadata.example.com": ["169.254.169.254"],
    "loop6.example.com": ["::1"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
}


@pytest.fixture(autouse=True)
def fake_dns(settings, monkeypatch):
    """No real DNS: known hosts resolve as listed, others fail. The guard is on (the default)."""
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = False
    answers = {**PUBLIC_DNS, **PRIVATE_DNS}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def other(make_client) -> APIClient:
    """Another subscriber of the same tenant."""
    return make_client(["read"], entity=OTHER)


def create(client: APIClient, **body):
    return client.post(URL, {"on_change": "webhook", "delivery_address": HOOK, **body}, format="json")


def garden_uri(slug: str) -> str:
    return f"stigmem://{node_authority()}/garden/{slug}"


def make_garden(owner: str, slug: str = "research", tenant: str = "default"):
    garden, _ = create_garden_from_body(
        Caller(owner, tenant, frozenset({"read", "write"})), {"slug": slug, "name": slug, "scope": "team"}
    )
    return garden


def assert_fact(entity: str = "stigmem://test/user/u1", *, scope: str = "company", by: str = ME, **extra) -> Fact:
    """A fact written the way the API writes it (``by`` must be a writer of the garden, if any)."""
    body = {
        "entity": entity,
        "relation": "memory:colour",
        "value": {"type": "string", "v": "blue"},
        "source": "stigmem://test/agent/seed",
        "scope": scope,
        **extra,
    }
    item = parse_fact_body(body)
    authorize(Caller(by, "default", frozenset({"read", "write"})), item)
    return assert_facts("default", [item], actor=by)[0].fact


def make_delivery(subscription: Subscription, *, fact: Fact | None = None, age_s: float = 60, **fields) -> Delivery:
    at = timezone.now() - timedelta(seconds=age_s)
    return Delivery.objects.create(
        subscription=subscription,
        tenant=subscription.tenant,
        event_type="fact_asserted" if fact else "ttp.tagged",
        topic="fact.asserted" if fact else "ttp.tagged",
        fact=fact,
        entity_uri=fact.entity if fact else "",
        payload={} if fact else {"tag": "T1059"},
        created_at=at,
        next_attempt_at=at,
        **fields,
    )


# --- create ------------------------------------------------------------------------------------


def test_create_scope_subscription_returns_the_record_with_a_standard_webhooks_secret(client):
    response = create(client, target="company", idempotency_key="k1")
    assert response.status_code == 201, response.json()
    body = response.json()
    secret = body.pop("signing_secret")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    created_at = body.pop("created_at")
    subscription = Subscription.objects.get()
    assert body == {
        "id": str(subscription.id),
        "subscriber_identity": ME,
        "target": "company",
        "target_kind": "scope",
        "on_change": "webhook",
        "delivery_address": HOOK,
        "idempotency_key": "k1",
        "topics": [],
        "last_delivered_at": None,
        "circuit_open": False,
        "consecutive_failures": 0,
        "status": "active",
    }
    assert created_at == subscription.created_at.isoformat()
    assert (subscription.tenant, subscription.match_key, subscription.signing_secret) == ("default", "company", secret)
    audit = AuditEvent.objects.get(event_type="subscription_created")
    assert (audit.actor, audit.target, audit.detail["target_kind"]) == (ME, str(subscription.id), "scope")


def test_entity_target_is_normalized_for_matching_and_kept_as_sent(client):
    response = create(client, target="  Stigmem://TEST/User/Bob Smith ")
    assert response.status_code == 201
    assert response.json()["target_kind"] == "entity"
    subscription = Subscription.objects.get()
    assert subscription.match_key == "stigmem://test/user/bob-smith"
    # The same entity written differently is the same subscription.
    again = create(client, target="stigmem://test/user/bob-smith")
    assert again.json()["id"] == str(subscription.id)
    assert Subscription.objects.count() == 1


def test_garden_target_for_a_member(client):
    garden = make_garden(ME)
    response = create(client, target=garden_uri("research"))
    assert response.status_code == 201
    assert response.json()["target_kind"] == "garden"
    assert Subscription.objects.get().match_key == str(garden.id)


def test_topic_subscription_without_target(client):
    response = create(client, topics=["fact.>", "ttp.rule.fired.*", "fact.>"])
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["target_kind"], body["target"], body["topics"]) == ("topics", None, ["fact.>", "ttp.rule.fired.*"])
    assert Subscription.objects.get().topics == ["fact.>", "ttp.rule.fired.*"]


def test_wake_subscription_takes_an_identity_and_is_not_resolved(client):
    response = client.post(
        URL, {"target": "team", "on_change": "wake", "delivery_address": "stigmem://test/agent/sleeper"}, format="json"
    )
    assert response.status_code == 201
    assert Subscription.objects.get().delivery_address == "stigmem://test/agent/sleeper"


def test_private_webhook_urls_are_accepted_when_allowed(client, settings):
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = True
    assert create(client, target="local", delivery_address="http://127.0.0.1:9999/hook").status_code == 201


# --- idempotent create -------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_existing_subscription(client):
    first = create(client, target="company", idempotency_key="abc").json()
    again = create(client, target="team", delivery_address="https://other.example.com/x", idempotency_key="abc")
    assert again.status_code == 201
    assert again.json() == first  # the secret too: the owner may have lost the first response
    assert Subscription.objects.count() == 1
    assert AuditEvent.objects.filter(event_type="subscription_created").count() == 1


def test_same_tuple_returns_the_existing_subscription(client):
    first = create(client, target="company").json()
    assert create(client, target="company", idempotency_key="new").json()["id"] == first["id"]
    assert create(client, target="company", on_change="wake").json()["id"] != first["id"]
    assert create(client, target="company", delivery_address="https://other.example.com/x").json()["id"] != first["id"]
    assert Subscription.objects.count() == 3


def test_idempotency_is_per_subscriber_and_tenant(client, other, make_client):
    mine = create(client, target="company", idempotency_key="shared").json()
    theirs = create(other, target="company", idempotency_key="shared").json()
    elsewhere = create(make_client(["read"], tenant="acme"), target="company", idempotency_key="shared").json()
    assert len({mine["id"], theirs["id"], elsewhere["id"]}) == 3
    assert theirs["subscriber_identity"] == OTHER


# --- bad input: exact status, nothing created --------------------------------------------------


BAD_BODIES = [
    ({"target": "company", "on_change": "poll", "delivery_address": HOOK}, ["body", "on_change"]),
    ({"target": "company", "delivery_address": HOOK}, ["body", "on_change"]),
    ({"on_change": "webhook", "delivery_address": HOOK}, ["body", "target"]),
    ({"target": "   ", "on_change": "webhook", "delivery_address": HOOK}, ["body", "target"]),
    ({"target": 7, "on_change": "webhook", "delivery_address": HOOK}, ["body", "target"]),
    ({"target": "x" * 513, "on_change": "webhook", "delivery_address": HOOK}, ["body", "target"]),
    ({"target": "a\x00b", "on_change": "webhook", "delivery_address": HOOK}, ["body", "target"]),
    ({"target": "company", "on_change": "webhook"}, ["body", "delivery_address"]),
    ({"target": "company", "on_change": "wake", "delivery_address": ""}, ["body", "delivery_address"]),
    (
        {"target": "company", "on_change": "webhook", "delivery_address": "https://h.example.com/" + "a" * 2048},
        ["body", "delivery_address"],
    ),
    (
        {"target": "company", "on_change": "webhook", "delivery_address": HOOK, "idempotency_key": "k" * 256},
        ["body", "idempotency_key"],
    ),
    (
        {"target": "company", "on_change": "webhook", "delivery_address": HOOK, "idempotency_key": 5},
        ["body", "idempotency_key"],
    ),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": []}, ["body", "topics"]),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": "fact.>"}, ["body", "topics"]),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": ["fact.>", "a.>.b"]}, ["body", "topics", 1]),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": ["*x"]}, ["body", "topics", 0]),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": ["a..b"]}, ["body", "topics", 0]),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": ["ok", 3]}, ["body", "topics", 1]),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": ["a b"]}, ["body", "topics", 0]),
    ({"on_change": "webhook", "delivery_address": HOOK, "topics": ["x"] * 65}, ["body", "topics"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_BODIES)
def test_invalid_bodies_are_422_and_create_nothing(client, body, loc):
    response = client.post(URL, body, format="json")
    assert response.status_code == 422, response.json()
    locs = [entry["loc"] for entry in response.json()["detail"]]
    assert loc in locs
    assert Subscription.objects.count() == 0


def test_non_object_body_is_422(client):
    response = client.post(URL, ["company"], format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert Subscription.objects.count() == 0


BAD_URLS = [
    "ftp://hooks.example.com/x",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "hooks.example.com/in",
    "http://10.1.2.3/hook",
    "http://127.0.0.1:8000/hook",
    "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "https://internal.example.com/hook",
    "https://metadata.example.com/hook",
    "https://loop6.example.com/hook",
    "https://mapped.example.com/hook",
    "https://does-not-resolve.example.com/hook",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_unsafe_webhook_urls_are_422_and_create_nothing(client, url):
    response = create(client, target="company", delivery_address=url)
    assert response.status_code == 422, response.json()
    assert response.json()["detail"][0]["loc"] == ["body", "delivery_address"]
    assert response.json()["detail"][0]["type"] == "url_unsafe"
    assert Subscription.objects.count() == 0


def test_malformed_entity_target_is_400(client):
    response = create(client, target="stigmem:// /user/x")
    assert response.status_code == 400
    assert response.json()["detail"]["code"] == "invalid_entity_uri"
    assert Subscription.objects.count() == 0


def test_garden_target_for_a_non_member_is_403(client):
    make_garden(OTHER)
    response = create(client, target=garden_uri("research"))
    assert response.status_code == 403
    assert Subscription.objects.count() == 0


def test_unknown_garden_and_another_tenants_garden_are_404(client):
    make_garden(ME, slug="elsewhere", tenant="acme")
    for slug in ("nope", "elsewhere"):
        response = create(client, target=garden_uri(slug))
        assert response.status_code == 404, slug
    assert Subscription.objects.count() == 0


def test_read_permission_is_required(make_client, anon):
    assert create(make_client(["write"]), target="company").status_code == 403
    assert create(anon, target="company").status_code == 401
    assert make_client(["write"]).get(URL).status_code == 403
    assert Subscription.objects.count() == 0


# --- reading, deleting: own only ---------------------------------------------------------------


def test_list_returns_own_subscriptions_only(client, other, make_client):
    mine = [create(client, target=scope).json()["id"] for scope in ("local", "team")]
    create(other, target="company")
    create(make_client(["read"], tenant="acme", entity=ME), target="company")
    body = client.get(URL).json()
    assert body["total"] == 2
    assert [s["id"] for s in body["subscriptions"]] == mine[::-1]
    assert all("signing_secret" not in s for s in body["subscriptions"])


def test_get_and_delete(client):
    created = create(client, target="company").json()
    subscription = Subscription.objects.get()
    make_delivery(subscription, fact=assert_fact())
    response = client.get(f"{URL}/{created['id']}")
    assert response.status_code == 200
    assert response.json() == {k: v for k, v in created.items() if k != "signing_secret"}
    assert client.delete(f"{URL}/{created['id']}").status_code == 204
    assert not Subscription.objects.exists() and not Delivery.objects.exists()
    assert AuditEvent.objects.filter(event_type="subscription_deleted", target=created["id"]).exists()
    assert client.get(f"{URL}/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", ""),
        ("delete", ""),
        ("post", "/rotate-secret"),
        ("post", "/pause"),
        ("post", "/resume"),
        ("get", "/events"),
        ("post", "/recover"),
        ("post", "/events/{event}/redeliver"),
    ],
)
def test_another_subscribers_or_tenants_subscription_is_404(client, other, make_client, method, suffix):
    subscription_id = create(client, target="company").json()["id"]
    subscription = Subscription.objects.get()
    event = make_delivery(subscription, status=Delivery.Status.FAILED)
    before = list(Subscription.objects.values())
    path = f"{URL}/{subscription_id}{suffix.format(event=event.id)}"
    for stranger in (other, make_client(["read", "write", "admin"], tenant="acme", entity=ME)):
        response = getattr(stranger, method)(path, format="json")
        assert response.status_code == 404, response.json()
        assert response.json() == {"detail": "subscription not found"}
    assert list(Subscription.objects.values()) == before
    assert Delivery.objects.get().status == Delivery.Status.FAILED


@pytest.mark.parametrize("ref", ["not-a-uuid", str(uuid.uuid4()), "%00"])
def test_unknown_or_malformed_ids_are_404(client, ref):
    assert client.get(f"{URL}/{ref}").status_code == 404
    assert client.post(f"{URL}/{ref}/pause").status_code == 404


# --- rotate, pause, resume ---------------------------------------------------------------------


def test_rotate_secret_keeps_the_old_one_for_24_hours(client):
    created = create(client, target="company").json()
    before = timezone.now()
    response = client.post(f"{URL}/{created['id']}/rotate-secret")
    assert response.status_code == 200
    new = response.json()["signing_secret"]
    assert new.startswith("whsec_") and new != created["signing_secret"]
    subscription = Subscription.objects.get()
    assert (subscription.signing_secret, subscription.previous_secret) == (new, created["signing_secret"])
    assert before + timedelta(hours=24) <= subscription.previous_secret_expires_at
    assert subscription.previous_secret_expires_at <= timezone.now() + timedelta(hours=24)
    assert AuditEvent.objects.filter(event_type="subscription_secret_rotated").count() == 1


def test_pause_and_resume(client):
    subscription_id = create(client, target="company").json()["id"]
    paused = client.post(f"{URL}/{subscription_id}/pause")
    assert (paused.status_code, paused.json()["status"]) == (200, "paused")
    assert client.post(f"{URL}/{subscription_id}/pause").json()["status"] == "paused"
    resumed = client.post(f"{URL}/{subscription_id}/resume")
    assert (resumed.status_code, resumed.json()["status"]) == (200, "active")
    assert Subscription.objects.get().status == "active"
    assert AuditEvent.objects.filter(event_type__in=["subscription_paused", "subscription_resumed"]).count() == 2


def test_resume_of_a_disabled_subscription_resets_its_failures(client):
    subscription_id = create(client, target="company").json()["id"]
    Subscription.objects.update(
        status="disabled",
        circuit="open",
        consecutive_failures=42,
        failing_since=timezone.now() - timedelta(days=6),
        circuit_retry_at=timezone.now(),
        circuit_cooldown_s=3600,
    )
    body = client.post(f"{URL}/{subscription_id}/resume").json()
    assert (body["status"], body["circuit_open"], body["consecutive_failures"]) == ("active", False, 0)
    subscription = Subscription.objects.get()
    assert (subscription.failing_since, subscription.circuit_retry_at, subscription.circuit_cooldown_s) == (
        None,
        None,
        0,
    )


def test_resume_of_a_paused_subscription_leaves_the_breaker_alone(client):
    subscription_id = create(client, target="company").json()["id"]
    Subscription.objects.update(status="paused", circuit="open", consecutive_failures=12)
    body = client.post(f"{URL}/{subscription_id}/resume").json()
    assert (body["status"], body["circuit_open"], body["consecutive_failures"]) == ("active", True, 12)


# --- replay window -----------------------------------------------------------------------------


def test_events_within_the_replay_window_with_rendered_payloads(client, settings):
    settings.STIGMEM_SUBSCRIPTION_REPLAY_S = 3600
    subscription_id = create(client, target="company").json()["id"]
    subscription = Subscription.objects.get()
    fact = assert_fact()
    make_delivery(subscription, fact=assert_fact(entity="stigmem://test/user/old"), age_s=7200)  # outside the window
    delivered = make_delivery(
        subscription, fact=fact, age_s=120, status=Delivery.Status.DELIVERED, attempts=1, delivered_at=timezone.now()
    )
    topic = make_delivery(subscription, age_s=60, status=Delivery.Status.FAILED, attempts=10, last_error="HTTP 500")
    response = client.get(f"{URL}/{subscription_id}/events")
    assert response.status_code == 200
    body = response.json()
    assert (body["total"], body["cursor"]) == (2, None)
    first, second = body["events"]
    assert first["id"] == str(delivered.id)
    assert first["payload"]["id"] == str(fact.id) and first["payload"]["value_v"] == "blue"
    assert (first["fact_id"], first["entity_uri"], first["event_type"]) == (str(fact.id), fact.entity, "fact_asserted")
    assert (first["delivery_status"], first["delivery_attempts"], first["last_error"]) == ("delivered", 1, None)
    assert first["delivered_at"] == delivered.delivered_at.isoformat()
    assert second == {
        "id": str(topic.id),
        "subscription_id": subscription_id,
        "event_type": "ttp.tagged",
        "entity_uri": None,
        "fact_id": None,
        "payload": {"tag": "T1059"},
        "created_at": topic.created_at.isoformat(),
        "delivered_at": None,
        "delivery_status": "failed",
        "delivery_attempts": 10,
        "last_error": "HTTP 500",
    }
    since = (timezone.now() - timedelta(seconds=90)).isoformat()
    assert [e["id"] for e in client.get(f"{URL}/{subscription_id}/events", {"since": since}).json()["events"]] == [
        str(topic.id)
    ]


def test_events_are_keyset_paginated(client):
    subscription_id = create(client, target="company").json()["id"]
    subscription = Subscription.objects.get()
    made = [make_delivery(subscription, age_s=100 - i).id for i in range(5)]
    # Two rows with the same created_at: the id breaks the tie, nothing skipped or repeated.
    Delivery.objects.filter(id__in=made[2:4]).update(created_at=timezone.now() - timedelta(seconds=50))
    expected = [str(d) for d in Delivery.objects.order_by("created_at", "id").values_list("id", flat=True)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get(f"{URL}/{subscription_id}/events", params).json()
        seen += [e["id"] for e in body["events"]]
        cursor = body["cursor"]
        if cursor is None:
            break
    assert seen == expected


def test_replay_hides_facts_the_subscriber_can_no_longer_see(client):
    subscription_id = create(client, target="team").json()["id"]
    subscription = Subscription.objects.get()
    make_garden(OTHER, slug="secret")
    hidden = assert_fact(scope="team", garden_id=garden_uri("secret"), by=OTHER)
    forgotten = assert_fact(entity="stigmem://test/user/forgotten", scope="team")
    create_tombstone(tenant="default", entity_uri="stigmem://test/user/forgotten", scope="*", actor=OTHER)
    for fact in (hidden, forgotten):
        make_delivery(subscription, fact=fact)
    payloads = [e["payload"] for e in client.get(f"{URL}/{subscription_id}/events").json()["events"]]
    assert sorted(payloads, key=str) == sorted(
        [{"fact_id": str(hidden.id), "redacted": True}, {"fact_id": str(forgotten.id), "redacted": True}], key=str
    )


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"since": "yesterday"}, 422),
        ({"limit": "0"}, 422),
        ({"limit": "501"}, 422),
        ({"limit": "x"}, 422),
        ({"cursor": "forged"}, 400),
    ],
)
def test_bad_event_queries(client, params, status):
    subscription_id = create(client, target="company").json()["id"]
    assert client.get(f"{URL}/{subscription_id}/events", params).status_code == status


def test_a_cursor_of_another_endpoint_is_refused(client):
    from stigmem.queries import encode_cursor

    subscription_id = create(client, target="company").json()["id"]
    response = client.get(f"{URL}/{subscription_id}/events", {"cursor": encode_cursor("audit", {"i": 3})})
    assert response.status_code == 400


# --- redeliver, recover ------------------------------------------------------------------------


def test_redeliver_requeues_one_failed_event(client):
    subscription_id = create(client, target="company").json()["id"]
    subscription = Subscription.objects.get()
    failed = make_delivery(subscription, status=Delivery.Status.FAILED, attempts=10, last_error="HTTP 404")
    pending = make_delivery(subscription)
    before = timezone.now()
    response = client.post(f"{URL}/{subscription_id}/events/{failed.id}/redeliver")
    assert (response.status_code, response.json()) == (200, {"requeued": 1})
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.last_error) == ("pending", 0, "HTTP 404")
    assert failed.next_attempt_at >= before
    # Already queued: nothing to do.
    assert client.post(f"{URL}/{subscription_id}/events/{pending.id}/redeliver").json() == {"requeued": 0}
    assert AuditEvent.objects.filter(event_type="subscription_event_redelivered").count() == 1


def test_redeliver_of_an_unknown_or_foreign_event_is_404(client, other):
    subscription_id = create(client, target="company").json()["id"]
    create(other, target="company")
    foreign = make_delivery(Subscription.objects.get(subscriber_identity=OTHER), status=Delivery.Status.FAILED)
    for event_id in (foreign.id, uuid.uuid4(), "nope"):
        response = client.post(f"{URL}/{subscription_id}/events/{event_id}/redeliver")
        assert (response.status_code, response.json()) == (404, {"detail": "event not found"})
    foreign.refresh_from_db()
    assert foreign.status == "failed"


def test_recover_requeues_failed_events_since(client):
    subscription_id = create(client, target="company").json()["id"]
    subscription = Subscription.objects.get()
    old = make_delivery(subscription, status=Delivery.Status.FAILED, age_s=3600)
    recent = make_delivery(subscription, status=Delivery.Status.FAILED, age_s=60)
    delivered = make_delivery(subscription, status=Delivery.Status.DELIVERED, age_s=30)
    since = (timezone.now() - timedelta(seconds=600)).isoformat()
    response = client.post(f"{URL}/{subscription_id}/recover", {"since": since}, format="json")
    assert (response.status_code, response.json()) == (200, {"requeued": 1})
    statuses = dict(Delivery.objects.values_list("id", "status"))
    assert statuses == {old.id: "failed", recent.id: "pending", delivered.id: "delivered"}
    # Without `since`: every failed event.
    assert client.post(f"{URL}/{subscription_id}/recover", {}, format="json").json() == {"requeued": 1}
    assert Delivery.objects.filter(status="failed").count() == 0


@pytest.mark.parametrize("body", [{"since": "not a date"}, {"since": 5}, ["x"]])
def test_recover_with_a_bad_body_is_422_and_changes_nothing(client, body):
    subscription_id = create(client, target="company").json()["id"]
    make_delivery(Subscription.objects.get(), status=Delivery.Status.FAILED)
    assert client.post(f"{URL}/{subscription_id}/recover", body, format="json").status_code == 422
    assert Delivery.objects.get().status == "failed"


# --- concurrency -------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("with_key", [True, False])
def test_concurrent_duplicate_creates_make_one_row(with_key):
    assert connection.vendor == "postgresql"
    raw_key = issue_key(tenant="default", entity_uri=ME, permissions=["read"]).raw_key
    workers = 8
    barrier = threading.Barrier(workers)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
            barrier.wait()
            body = {"target": "company", "on_change": "webhook", "delivery_address": HOOK}
            if with_key:
                body["idempotency_key"] = "same"
            response = client.post(URL, body, format="json")
            with lock:
                results.append((response.status_code, response.json().get("id")))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Subscription.objects.count() == 1
    assert results == [(201, str(Subscription.objects.get().id))] * workers


# --- admin console -----------------------------------------------------------------------------


def admin_action(browser: Client, action: str, subscription: Subscription):
    return browser.post(
        reverse("admin:subscriptions_subscription_changelist"),
        {"action": action, "_selected_action": [str(subscription.pk)]},
        follow=True,
    )


def test_admin_lists_subscriptions_without_secrets(browser, client):
    secret = create(client, target="company").json()["signing_secret"]
    Subscription.objects.update(circuit="open", consecutive_failures=11, last_error="HTTP 503 from receiver")
    page = browser.get(reverse("admin:subscriptions_subscription_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "HTTP 503 from receiver" in text and "hooks.example.com" in text
    detail = browser.get(reverse("admin:subscriptions_subscription_change", args=[Subscription.objects.get().pk]))
    assert detail.status_code == 200
    assert secret not in text and secret not in detail.content.decode()


def test_admin_actions_go_through_the_service(browser, client):
    old_secret = create(client, target="company").json()["signing_secret"]
    subscription = Subscription.objects.get()
    failed = make_delivery(subscription, status=Delivery.Status.FAILED, attempts=10)

    admin_action(browser, "pause", subscription)
    assert Subscription.objects.get().status == "paused"
    Subscription.objects.update(status="disabled", circuit="open", consecutive_failures=30)
    admin_action(browser, "resume", subscription)
    row = Subscription.objects.get()
    assert (row.status, row.circuit, row.consecutive_failures) == ("active", "closed", 0)

    Subscription.objects.update(circuit="open", consecutive_failures=10)
    admin_action(browser, "reset_circuit", subscription)
    row = Subscription.objects.get()
    assert (row.status, row.circuit, row.consecutive_failures) == ("active", "closed", 0)

    page = admin_action(browser, "rotate_secret", subscription)
    row = Subscription.objects.get()
    assert row.previous_secret == old_secret and row.signing_secret != old_secret
    assert row.signing_secret in page.content.decode()  # shown once, to hand to the subscriber

    admin_action(browser, "recover_failed", subscription)
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == ("pending", 0)

    ours = AuditEvent.objects.filter(event_type__startswith="subscription_").exclude(event_type="subscription_created")
    actors = set(ours.values_list("actor", flat=True))
    assert actors == {"admin:root"}
    assert set(AuditEvent.objects.values_list("event_type", flat=True)) >= {
        "subscription_paused",
        "subscription_resumed",
        "subscription_circuit_reset",
        "subscription_secret_rotated",
        "subscription_recovered",
    }


def test_admin_cannot_add_or_edit_subscriptions(browser, client):
    create(client, target="company")
    pk = Subscription.objects.get().pk
    assert browser.get(reverse("admin:subscriptions_subscription_add")).status_code == 403
    before = list(Subscription.objects.values())
    browser.post(reverse("admin:subscriptions_subscription_change", args=[pk]), {"status": "disabled"})
    assert list(Subscription.objects.values()) == before
