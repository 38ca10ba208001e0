"""Standard Webhooks signing (WIRE.md §5.3): the official verifier accepts what the engine sends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import pytest
import responses
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from subscriptions.delivery import run_once
from subscriptions.signing import signature, signature_headers, signing_secrets
from tests.subscriptions.delivery_helpers import OLD_SECRET, SECRET, URL, make_delivery, make_subscription


@pytest.fixture(autouse=True)
def _allow_loopback(settings):
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def now():
    return timezone.now()


def capture(subscription, now):
    """Deliver one event to a mocked receiver; returns the raw body and the headers it got."""
    make_delivery(subscription, now)
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, URL, status=200)
        assert run_once(now) == 1
        request = mock.calls[0].request
    return request.body, dict(request.headers)


def test_the_signature_is_hmac_sha256_over_id_timestamp_and_body():
    body = b'{"a":1}'
    expected = hmac.new(b"k" * 32, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert signature(SECRET, "msg_1", 1700000000, body) == "v1," + base64.b64encode(expected).decode()
    # An unpadded secret decodes to the same key.
    assert signature(SECRET.rstrip("="), "msg_1", 1700000000, body) == signature(SECRET, "msg_1", 1700000000, body)


def test_the_official_verifier_accepts_our_requests(client, now):
    body, headers = capture(make_subscription(now), now)
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    assert len(headers["webhook-signature"].split(" ")) == 1


def test_it_rejects_a_tampered_body_or_a_wrong_secret(client, now):
    body, headers = capture(make_subscription(now), now)
    tampered = body.replace(b'"n":1', b'"n":2')
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, {**headers, "webhook-id": "another"})


def test_during_a_rotation_both_secrets_verify(client, now):
    sub = make_subscription(now, previous_secret=OLD_SECRET, previous_secret_expires_at=now + timedelta(hours=24))
    body, headers = capture(sub, now)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    assert Webhook(OLD_SECRET).verify(body, headers) == json.loads(body)


def test_after_the_overlap_only_the_new_secret_signs(client, now):
    sub = make_subscription(now, previous_secret=OLD_SECRET, previous_secret_expires_at=now - timedelta(seconds=1))
    assert signing_secrets(sub, now) == (SECRET,)
    body, headers = capture(sub, now)
    Webhook(SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(body, headers)


def test_signature_headers_shape():
    headers = signature_headers([SECRET, OLD_SECRET], "evt", 1700000000, b"{}")
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-timestamp"] == "1700000000"
    new, old = headers["webhook-signature"].split(" ")
    assert new == signature(SECRET, "evt", 1700000000, b"{}")
    assert old == signature(OLD_SECRET, "evt", 1700000000, b"{}")
