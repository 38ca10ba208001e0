"""Facts for the decay API, job and command tests, written the way the API writes them."""

from __future__ import annotations

from decay.models import DecayPolicy
from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts
from stigmem.models import AuditEvent, Fact, Job

SEED_SOURCE = "stigmem://test/agent/seed"


def seed(
    tenant: str = "default",
    count: int = 3,
    *,
    scope: str = "company",
    confidence: float = 0.9,
    relation: str = "memory:colour",
    prefix: str = "u",
) -> list[Fact]:
    bodies = [
        {
            "entity": f"stigmem://test/user/{prefix}{index}",
            "relation": relation,
            "value": {"type": "string", "v": f"blue {index}"},
            "source": SEED_SOURCE,
            "scope": scope,
            "confidence": confidence,
        }
        for index in range(count)
    ]
    return [outcome.fact for outcome in assert_facts(tenant, [parse_fact_body(body) for body in bodies])]


def expired_count(tenant: str = "default") -> int:
    return Fact.objects.filter(tenant=tenant, expired_at__isnull=False).count()


def snapshot() -> tuple:
    """What a refused request must leave exactly as it was."""
    return (
        sorted(Fact.objects.values_list("id", "expired_at")),
        Job.objects.count(),
        AuditEvent.objects.filter(event_type__startswith="decay").count(),
    )


def policy_rows() -> list[tuple]:
    """Every stored policy's fields, to show that a refused request changed nothing."""
    return list(
        DecayPolicy.objects.order_by("pk").values_list(
            "tenant",
            "name",
            "relation_prefix",
            "scope",
            "ttl_seconds",
            "half_life_seconds",
            "min_confidence",
            "enabled",
        )
    )
