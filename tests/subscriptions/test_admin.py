"""The operator console for subscriptions: the read-only delivery admin, redeliver and test events."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import responses
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from stigmem.models import AuditEvent, Fact
from subscriptions import delivery
from subscriptions.models import Delivery, Subscription
from tests.subscriptions.delivery_helpers import SECRET, URL, make_delivery, make_subscription

DELIVERIES = "admin:subscriptions_delivery_changelist"
SUBSCRIPTIONS = "admin:subscriptions_subscription_changelist"


@pytest.fixture(autouse=True)
def _engine_settings(settings):
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def sub(client, now) -> Subscription:
    """A webhook subscription whose subscriber holds a read key (the `client` fixture)."""
    return make_subscription(now)


@pytest.fixture
def fact(client) -> Fact:
    response = client.post(
        "/v1/facts",
        {
            "entity": "stigmem://test/user/alice",
            "relation": "memory:note",
            "value": {"type": "string", "v": "the kettle is on"},
            "source": "stigmem://test/agent/writer",
            "scope": "team",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return Fact.objects.get(id=response.json()["id"])


def change_url(row: Delivery) -> str:
    return reverse("admin:subscriptions_delivery_change", args=[row.pk])


def shown(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_delivery_changelist_lists_the_rows(browser, sub, now):
    failed = make_delivery(sub, now, status=Delivery.Status.FAILED, attempts=4, last_status_code=500)
    done = make_delivery(sub, now, status=Delivery.Status.DELIVERED, delivered_at=now)
    response = browser.get(reverse(DELIVERIES))
    assert response.status_code == 200
    assert {row.pk for row in response.context["cl"].result_list} == {failed.pk, done.pk}
    html = response.content.decode()
    assert str(failed.pk) in html and str(done.pk) in html
    assert SECRET not in html


def test_delivery_filters(browser, sub, now):
    other = make_subscription(now, delivery_address="http://127.0.0.1:9/other")
    failed = make_delivery(sub, now, status=Delivery.Status.FAILED)
    make_delivery(sub, now, status=Delivery.Status.DELIVERED, delivered_at=now)
    elsewhere = make_delivery(other, now)
    old = make_delivery(other, now, created_at=now - timedelta(days=400))

    def listed(**params) -> set:
        response = browser.get(reverse(DELIVERIES), params)
        assert response.status_code == 200, params
        return {row.pk for row in response.context["cl"].result_list}

    assert listed(status__exact="failed") == {failed.pk}
    assert listed(subscription__id__exact=str(other.pk)) == {elsewhere.pk, old.pk}
    assert listed(created_at__year=str(old.created_at.year), created_at__month=str(old.created_at.month)) == {old.pk}
    assert listed(q=str(failed.pk)) == {failed.pk}


def test_subscription_change_page_links_to_its_deliveries(browser, sub, now):
    make_delivery(sub, now)
    page = browser.get(reverse("admin:subscriptions_subscription_change", args=[sub.pk]))
    assert page.status_code == 200
    assert f"{reverse(DELIVERIES)}?subscription__id__exact={sub.pk}" in page.content.decode()
    assert SECRET not in page.content.decode()


def test_change_page_shows_the_rendered_request_and_the_last_response(browser, sub, fact, now):
    row = make_delivery(
        sub,
        now,
        fact=fact,
        status=Delivery.Status.FAILED,
        attempts=3,
        last_status_code=503,
        last_response="upstream is napping",
        last_error="HTTP 503 (gave up after 3 attempts)",
    )
    page = browser.get(change_url(row))
    assert page.status_code == 200
    html = page.content.decode()
    assert f"POST {URL}" in html
    assert f"webhook-id: {row.pk}" in html
    # The body is the engine's own rendering of the fact for this subscriber.
    assert "the kettle is on" in html
    assert f"&quot;event_id&quot;: &quot;{row.pk}&quot;" in html
    assert "503" in html and "upstream is napping" in html and "gave up after 3 attempts" in html
    assert SECRET not in html
    assert SECRET.removeprefix("whsec_") not in html


def test_change_page_says_why_nothing_would_be_sent(browser, now, db):
    keyless = make_subscription(now, subscriber_identity="stigmem://test/agent/nobody")
    row = make_delivery(keyless, now)
    page = browser.get(change_url(row))
    assert page.status_code == 200
    assert "Nothing would be sent: the subscriber has no active API key with read permission." in page.content.decode()


def test_deliveries_are_read_only(browser, sub, now):
    row = make_delivery(sub, now, status=Delivery.Status.FAILED)
    assert browser.get(reverse("admin:subscriptions_delivery_add")).status_code == 403
    assert browser.post(change_url(row), {"status": "delivered"}).status_code == 403
    delete = reverse("admin:subscriptions_delivery_delete", args=[row.pk])
    assert browser.post(delete, {"post": "yes"}).status_code == 403
    row.refresh_from_db()
    assert row.status == Delivery.Status.FAILED


def test_redeliver_action_requeues_failed_and_delivered(browser, sub, now):
    failed = make_delivery(sub, now, status=Delivery.Status.FAILED, attempts=6, next_attempt_at=now - timedelta(days=1))
    done = make_delivery(sub, now, status=Delivery.Status.DELIVERED, attempts=1, delivered_at=now)
    waiting = make_delivery(sub, now, status=Delivery.Status.PENDING, attempts=2)
    response = browser.post(
        reverse(DELIVERIES),
        {"action": "redeliver", "_selected_action": [str(failed.pk), str(done.pk), str(waiting.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert shown(response) == ["Queued 2 event(s) again. 1 skipped: already queued or being delivered."]
    for row in (failed, done):
        row.refresh_from_db()
        assert row.status == Delivery.Status.PENDING
        assert row.attempts == 0
        assert row.delivered_at is None
        assert row.next_attempt_at >= now
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == (Delivery.Status.PENDING, 2)
    audited = AuditEvent.objects.filter(event_type="subscription_event_redelivered", target=str(sub.pk))
    assert sorted(e.detail["event_id"] for e in audited) == sorted([str(failed.pk), str(done.pk)])
    assert {e.actor for e in audited} == {"admin:root"}


def test_send_test_event_creates_one_delivery_per_subscription(browser, sub, now):
    paused = make_subscription(now, delivery_address="http://127.0.0.1:9/paused", status=Subscription.Status.PAUSED)
    untouched = make_subscription(now, delivery_address="http://127.0.0.1:9/untouched")
    response = browser.post(
        reverse(SUBSCRIPTIONS),
        {"action": "send_test_event", "_selected_action": [str(sub.pk), str(paused.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert shown(response) == ["Queued a test event for 2 subscription(s). Not active, so waiting until resumed: 1."]
    for subscription in (sub, paused):
        row = Delivery.objects.get(subscription=subscription)
        assert (row.event_type, row.topic, row.status) == ("test", "subscription.test", Delivery.Status.PENDING)
        assert row.payload == {"test": True, "sent_by": "admin:root"}
        assert row.fact_id is None and row.event_id is None
        assert AuditEvent.objects.filter(
            event_type="subscription_test_event_sent", target=str(subscription.pk), actor="admin:root"
        ).exists()
    assert not Delivery.objects.filter(subscription=untouched).exists()

    # It is an ordinary delivery: the engine sends it to the active subscription only.
    with responses.RequestsMock() as receiver:
        receiver.add(responses.POST, URL, status=204)
        delivery.run_once(timezone.now() + timedelta(seconds=1))
        assert len(receiver.calls) == 1
        body = json.loads(receiver.calls[0].request.body)
    sent = Delivery.objects.get(subscription=sub)
    assert body["event_id"] == str(sent.pk)
    assert (body["event_type"], body["topic"]) == ("test", "subscription.test")
    assert body["payload"] == {"test": True, "sent_by": "admin:root"}
    assert sent.status == Delivery.Status.DELIVERED
    assert Delivery.objects.get(subscription=paused).status == Delivery.Status.PENDING
