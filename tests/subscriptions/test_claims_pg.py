"""Two delivery workers on PostgreSQL (WIRE.md §5.4): no delivery is claimed twice.

Real threads, each with its own database connection, run the engine's passes concurrently over
200 due deliveries spread across 20 subscriptions. Every claim is recorded; afterwards each
delivery was claimed by exactly one pass and reached the receiver exactly once.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
import responses
from django.db import connection
from django.utils import timezone

from stigmem.keys import issue_key
from subscriptions import delivery
from subscriptions.models import Delivery
from tests.subscriptions.delivery_helpers import SUBSCRIBER, URL, make_delivery, make_subscription

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 2
DELIVERIES = 200


def test_two_workers_never_claim_the_same_delivery(settings, monkeypatch):
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = True
    assert connection.vendor == "postgresql"
    now = timezone.now()
    issue_key(tenant="default", entity_uri=SUBSCRIBER, permissions=["read"])
    subscriptions = [make_subscription(now) for _ in range(20)]
    expected = {str(make_delivery(subscriptions[n % 20], now).id) for n in range(DELIVERIES)}

    claims: list[tuple[int, str]] = []
    claims_lock = threading.Lock()
    real_claim = delivery.claim

    def recording_claim(at, limit=delivery.CLAIM_BATCH):
        rows = real_claim(at, limit)
        with claims_lock:
            claims.extend((threading.get_ident(), str(row.id)) for row in rows)
        return rows

    start = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(timeout=30)
            while delivery.run_once(limit=7):
                pass
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    with responses.RequestsMock() as receiver:
        receiver.add(responses.POST, URL, status=200)
        monkeypatch.setattr(delivery, "claim", recording_claim)
        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        sent = Counter(json.loads(call.request.body)["event_id"] for call in receiver.calls)

    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    claimed = Counter(delivery_id for _, delivery_id in claims)
    assert set(claimed) == expected
    assert max(claimed.values()) == 1, "a delivery was claimed twice"
    assert len({worker_id for worker_id, _ in claims}) == WORKERS  # both workers really took part
    assert sent == Counter(dict.fromkeys(expected, 1))
    assert Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == DELIVERIES
    assert set(Delivery.objects.values_list("attempts", flat=True)) == {1}
