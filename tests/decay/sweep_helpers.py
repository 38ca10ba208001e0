"""Facts written at chosen times, and the state a sweep may change, for the sweep tests."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from stigmem.auth import Caller
from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts
from stigmem.limits import QUERY_LIMIT_MAX
from stigmem.models import AuditEvent, Event, Fact
from stigmem.queries import FactQuery, run_fact_query

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = 3600
DAY = 86400


@contextmanager
def frozen(when: datetime):
    """The node's clock (``timezone.now``) reads ``when`` inside the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timezone, "now", lambda: when)
        yield


def body(entity: str, relation: str = "memory:note", value: str = "v", **extra) -> dict:
    fact = {
        "entity": f"stigmem://test/{entity}",
        "relation": relation,
        "value": {"type": "string", "v": value},
        "source": "stigmem://test/agent/writer",
        "confidence": 1.0,
        "scope": "local",
    }
    fact.update(extra)
    return fact


def write(at: datetime, *bodies: dict, tenant: str = "default") -> list[Fact]:
    """Assert the facts as if the node's clock read ``at``."""
    with frozen(at):
        return [o.fact for o in assert_facts(tenant, [parse_fact_body(b) for b in bodies])]


def ago(seconds: float, now: datetime = T0) -> datetime:
    return now - timedelta(seconds=seconds)


def expired_ids(tenant: str = "default") -> set:
    return set(Fact.objects.filter(tenant=tenant, expired_at__isnull=False).values_list("id", flat=True))


def current_ids(tenant: str = "default") -> set:
    """The facts that are their key's current value, as the query API answers it (expired included)."""
    caller = Caller(entity_uri="stigmem://test/agent/admin", tenant=tenant, permissions=frozenset({"admin"}))
    page = run_fact_query(caller, FactQuery(include_expired=True, limit=QUERY_LIMIT_MAX))
    return {fact.id for fact in page.facts}


def snapshot() -> tuple:
    """Everything a sweep may change."""
    return (
        sorted(Fact.objects.values_list("id", "expired_at", "expired_by")),
        sorted(i for tenant in set(Fact.objects.values_list("tenant", flat=True)) for i in current_ids(tenant)),
        Event.objects.count(),
        AuditEvent.objects.filter(event_type="decay_sweep").count(),
    )


def expiry_events(tenant: str = "default") -> list[dict]:
    return [e.payload for e in Event.objects.filter(tenant=tenant, topic="fact.expired").order_by("seq")]
