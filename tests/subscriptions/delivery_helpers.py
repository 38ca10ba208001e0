"""Rows and receivers shared by the delivery tests."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

from subscriptions.models import Delivery, Subscription

SUBSCRIBER = "stigmem://test/agent/tester"  # the `client` fixture's identity
URL = "http://127.0.0.1:9/hook"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()


def make_subscription(now: datetime, **fields) -> Subscription:
    values = {
        "tenant": "default",
        "subscriber_identity": SUBSCRIBER,
        "target": "team",
        "target_kind": Subscription.Kind.SCOPE,
        "on_change": Subscription.OnChange.WEBHOOK,
        "delivery_address": URL,
        "created_at": now - timedelta(hours=1),
        "signing_secret": SECRET,
    }
    values.update(fields)
    return Subscription.objects.create(**values)


def make_delivery(subscription: Subscription, now: datetime, fact=None, **fields) -> Delivery:
    values = {
        "subscription": subscription,
        "tenant": subscription.tenant,
        "event_type": "fact_asserted" if fact is not None else "ttp.tagged",
        "topic": "fact.asserted" if fact is not None else "ttp.tagged",
        "fact": fact,
        "entity_uri": fact.entity if fact is not None else "",
        "payload": {} if fact is not None else {"n": 1},
        "created_at": now - timedelta(seconds=2),
        "next_attempt_at": now,
    }
    values.update(fields)
    return Delivery.objects.create(**values)
