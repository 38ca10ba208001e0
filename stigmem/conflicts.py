"""Listing and resolving conflicts (WIRE.md §2.7)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from stigmem import events, gardens
from stigmem.auth import Caller
from stigmem.clock import clock_transaction
from stigmem.errors import ApiError, invalid, not_found
from stigmem.fact_input import FactInput, input_from_fact
from stigmem.facts import assert_facts, authorize, conflict_payload
from stigmem.models import Conflict, Fact
from stigmem.models.facts import CONFLICT_ID_PREFIX
from stigmem.queries import decode_cursor, encode_cursor, visible_facts
from stigmem.values import parse_value


def _parse_conflict_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw.removeprefix(CONFLICT_ID_PREFIX))
    except ValueError:
        return None


@dataclass
class ConflictPage:
    conflicts: list[Conflict]
    cursor: str | None
    has_more: bool


def visible_conflicts(caller: Caller) -> QuerySet[Conflict]:
    """Conflicts whose two facts the caller may both see (the read-path rules of queries.py)."""
    visible = visible_facts(caller).values("id")
    return Conflict.objects.filter(tenant=caller.tenant, fact_a__in=visible, fact_b__in=visible)


def list_conflicts(caller: Caller, status: str, cursor: str | None, limit: int) -> ConflictPage:
    rows = visible_conflicts(caller).filter(status=status).select_related("fact_a", "fact_b")
    if cursor:
        position = decode_cursor("conflicts", cursor)
        try:
            at = datetime.fromisoformat(position["t"])
            last_id = uuid.UUID(position["i"])
        except (KeyError, TypeError, ValueError):
            raise ApiError(400, {"code": "cursor_invalid", "message": "cursor is malformed"}) from None
        rows = rows.filter(detected_at__lte=at).exclude(detected_at=at, id__gte=last_id)
    page = list(rows.order_by("-detected_at", "-id")[: limit + 1])
    has_more = len(page) > limit
    page = page[:limit]
    next_cursor = None
    if has_more:
        last = page[-1]
        next_cursor = encode_cursor("conflicts", {"t": last.detected_at.isoformat(), "i": str(last.id)})
    return ConflictPage(page, next_cursor, has_more)


def resolve_conflict(
    caller: Caller,
    raw_id: str,
    *,
    winning_fact_id: Any = None,
    new_value: Any = None,
    note: str = "",
) -> Fact:
    """Settle a conflict: the winner (or a new value from the caller) becomes current."""
    conflict_id = _parse_conflict_id(raw_id)
    if conflict_id is None:
        raise not_found("conflict")
    if winning_fact_id is None and new_value is None:
        raise invalid(["body"], "give winning_fact_id or new_value", "missing")
    with clock_transaction() as clock:
        conflict = visible_conflicts(caller).select_for_update().select_related("fact_a", "fact_b")
        conflict = conflict.filter(id=conflict_id).first()
        if conflict is None:
            raise not_found("conflict")
        if conflict.fact_a.garden:
            # Settling a garden's dispute changes its current value: a write into the garden.
            gardens.require_writer(caller, conflict.fact_a.garden)
        if conflict.status == Conflict.Status.RESOLVED:
            raise ApiError(409, "conflict already resolved")
        if winning_fact_id is not None:
            winner = _winner(conflict, winning_fact_id)
            assert_facts(caller.tenant, [input_from_fact(winner)], record_conflicts=False, actor=caller.entity_uri)
        else:
            winner = _assert_new_value(caller, conflict.fact_b, new_value)
        Fact.objects.filter(id=winner.id).update(contradicted=False)
        conflict.status = Conflict.Status.RESOLVED
        conflict.resolved_at = timezone.now()
        conflict.resolved_by = caller.entity_uri
        conflict.resolution_fact = winner
        conflict.resolution_note = note
        conflict.save()
        events.emit(clock, caller.tenant, events.CONFLICT_RESOLVED, conflict_payload(conflict))
    return winner


def _winner(conflict: Conflict, winning_fact_id: Any) -> Fact:
    for fact in (conflict.fact_a, conflict.fact_b):
        if str(fact.id) == str(winning_fact_id):
            return fact
    raise invalid(["body", "winning_fact_id"], "winning_fact_id must be one of the two facts in conflict")


def _assert_new_value(caller: Caller, template: Fact, raw_value: Any) -> Fact:
    value = parse_value(raw_value, ["body", "new_value"])
    item = FactInput(
        entity=template.entity,
        relation=template.relation,
        value=value,
        source=caller.entity_uri,
        confidence=1.0,
        scope=template.scope,
        garden=template.garden,
    )
    authorize(caller, item)  # interpret_as: instruction needs admin here too
    return assert_facts(caller.tenant, [item], record_conflicts=False, actor=caller.entity_uri)[0].fact
