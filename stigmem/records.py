"""The fact record every response carries (WIRE.md §2.5)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django.utils import timezone

from stigmem import gardens, sanitizer
from stigmem.confidence import effective_confidence
from stigmem.models import Fact
from stigmem.values import decode_value


def garden_uris_of(facts: Iterable[Fact]) -> dict[str, str]:
    """Garden URIs by the facts' garden ids, in one query (deleted gardens are absent)."""
    uris = gardens.garden_uris({uuid.UUID(fact.garden) for fact in facts if fact.garden})
    return {str(garden_id): uri for garden_id, uri in uris.items()}


def is_expired(fact: Fact, now: datetime) -> bool:
    return fact.expired_at is not None or (fact.valid_until_at is not None and fact.valid_until_at <= now)


def fact_record(
    fact: Fact,
    *,
    warnings: list[str] | None = None,
    now: datetime | None = None,
    garden_uris: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The wire record of a fact; pass ``now`` and ``garden_uris`` when rendering many."""
    now = now or timezone.now()
    if fact.garden and garden_uris is None:
        garden_uris = garden_uris_of([fact])
    # Read-time prompt-injection check: never rewrites the value (its CID must still verify).
    verdict = sanitizer.inspect(fact.value_type, fact.value_v)
    return {
        "id": str(fact.id),
        "entity": fact.entity,
        "relation": fact.relation,
        "value": {
            "type": fact.value_type,
            "v": None if verdict.redacted else decode_value(fact.value_type, fact.value_v),
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
        "garden_id": garden_uris.get(fact.garden) if fact.garden else None,
        "attested": None,
        "attested_key_id": None,
        "contradicted": fact.contradicted,
        "warnings": warnings or [],
        "source_trust": None,
        "effective_confidence": effective_confidence(fact, now),
        "quarantine_status": None,
        "quarantine_garden_id": None,
        "sanitizer_warnings": verdict.warnings,
        "sanitizer_redacted": verdict.redacted,
        "cid": fact.cid,
        "derived_from": fact.derived_from,
        "expired": is_expired(fact, now),
    }
