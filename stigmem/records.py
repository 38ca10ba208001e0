"""The fact record every response carries (WIRE.md §2.5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from stigmem.models import Fact
from stigmem.node import node_authority
from stigmem.values import decode_value


def garden_uri(slug: str) -> str:
    return f"stigmem://{node_authority()}/garden/{slug}"


def is_expired(fact: Fact, now: datetime) -> bool:
    return fact.expired_at is not None or (fact.valid_until_at is not None and fact.valid_until_at <= now)


def fact_record(fact: Fact, *, warnings: list[str] | None = None, now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    return {
        "id": str(fact.id),
        "entity": fact.entity,
        "relation": fact.relation,
        "value": {
            "type": fact.value_type,
            "v": decode_value(fact.value_type, fact.value_v),
            "interpret_as": fact.interpret_as,
        },
        "source": fact.source,
        "timestamp": fact.timestamp.isoformat(),
        "hlc": fact.hlc,
        "received_from": fact.received_from,
        "valid_until": fact.valid_until,
        "confidence": fact.confidence,
        "scope": fact.scope,
        "origin_node_id": fact.origin_node_id,
        "origin_allowed_scopes": fact.origin_allowed_scopes,
        "garden_id": garden_uri(fact.garden) if fact.garden else None,
        "attested": None,
        "attested_key_id": None,
        "contradicted": fact.contradicted,
        "warnings": warnings or [],
        "source_trust": None,
        "effective_confidence": None,
        "quarantine_status": None,
        "quarantine_garden_id": None,
        "sanitizer_warnings": [],
        "sanitizer_redacted": False,
        "cid": fact.cid,
        "derived_from": fact.derived_from,
        "expired": is_expired(fact, now),
    }
