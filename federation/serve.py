"""What this node serves to its peers (WIRE.md §6.4, §6.6): facts and tombstones, paged.

Both endpoints are called with a peer token (``federation.tokens``) and serve only what
originated here, from the tenant the agreement belongs to, in the scopes both sides allow.

Facts are paged by ``seq``, the fact log's position, which grows in commit order: a cursor never
skips a fact that commits later. The cursor is the decimal ``seq`` of the last fact served; peers
treat it as opaque.

Tombstones and revocations share ONE keyset ordering, an event log of
``(time, kind, id)``: a tombstone's time is its ``created_at``, a revocation's its ``revoked_at``,
and at equal times tombstones (kind 0) come before revocations (kind 1). The cursor is the
position of the last event served, ``"<epoch microseconds>.<kind>.<id>"``. So:

- a revocation has its own position: a tombstone a peer pulled long ago is revoked on a later
  page, after every event the peer has already seen;
- a revocation always comes after the tombstone it revokes (it cannot be older), so a peer
  applying a page's tombstones before its revocations never meets a revocation of a tombstone
  it has not received;
- one cursor and one ``has_more`` cover both lists, and a page holds at most ``limit`` events.

The ordering matches commit order as long as writers of tombstones and revocations are
serialized and stamp their time while serialized: ``create_tombstone`` does that under the node
clock's lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Substr
from django.utils import timezone

from federation import metrics
from federation.tokens import PeerCall
from stigmem import audit, sanitizer, tombstones
from stigmem.errors import ApiError, InputInvalid, field_error
from stigmem.models import Fact, Tombstone, TombstoneRevocation
from stigmem.queries import parse_limit
from stigmem.values import decode_value, text_problem

FACTS_LIMIT_DEFAULT = 100
TOMBSTONES_LIMIT_DEFAULT = 200
LIMIT_MAX = 500
PUSH_DISABLED = "push replication not enabled on this node"
SYSTEM_RELATION_PREFIX = "stigmem:"
_BIGINT_MAX = 2**63 - 1
_SEQ_CURSOR = re.compile(r"[0-9]{1,19}")
_EVENT_CURSOR = re.compile(r"([0-9]{1,18})\.([01])\.([A-Za-z0-9_-]{1,48})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
TOMBSTONE_EVENT, REVOCATION_EVENT = 0, 1


# --- scopes -----------------------------------------------------------------------------------


def permitted_scopes(call: PeerCall) -> set[str]:
    """The agreement's scopes the token asks for, minus what never leaves this node."""
    scopes = set(call.peer.allowed_scopes) & call.scopes
    scopes.discard("local")
    if not settings.STIGMEM_FEDERATION_ALLOW_TEAM:
        scopes.discard("team")
    return scopes


def _scopes_for(call: PeerCall, requested: str | None) -> set[str]:
    permitted = permitted_scopes(call)
    if not permitted:
        raise ApiError(403, "no permitted scopes")
    if requested is None:
        return permitted
    if requested not in permitted:
        peer = call.peer
        shown = requested[:64] if text_problem(requested) is None else repr(requested[:64])
        audit.record(
            peer.tenant,
            "federation_scope_violation",
            actor=peer.node_id,
            target=peer.peer_id,
            detail={"requested_scope": shown, "permitted_scopes": sorted(permitted)},
        )
        raise ApiError(403, "scope not permitted for this peer")
    return {requested}


# --- query parameters -------------------------------------------------------------------------


def _param(params, name: str) -> str | None:
    raw = params.get(name)
    return None if raw is None or raw == "" else raw


def _cursor_error() -> InputInvalid:
    return InputInvalid(
        [field_error(["query", "cursor"], "cursor must be a cursor this endpoint returned", "value_error")]
    )


def _seq_cursor(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _SEQ_CURSOR.fullmatch(raw) or int(raw) > _BIGINT_MAX:
        raise _cursor_error()
    return int(raw)


@dataclass(frozen=True)
class FactsQuery:
    cursor: str | None
    after_seq: int
    limit: int
    scope: str | None


def parse_facts_query(params) -> FactsQuery:
    """Validate ``cursor``, ``limit`` and ``scope`` (422 for malformed values)."""
    errors: list[dict[str, Any]] = []
    limit = parse_limit(params, errors, default=FACTS_LIMIT_DEFAULT, maximum=LIMIT_MAX)
    cursor = _param(params, "cursor")
    try:
        after = _seq_cursor(cursor)
    except InputInvalid as exc:
        errors.extend(exc.detail)
        after = None
    if errors:
        raise InputInvalid(errors)
    return FactsQuery(cursor=cursor, after_seq=after or 0, limit=limit, scope=_param(params, "scope"))


@dataclass(frozen=True)
class EventPosition:
    time: datetime
    kind: int
    id: str

    def encode(self) -> str:
        return f"{(self.time - _EPOCH) // _MICROSECOND}.{self.kind}.{self.id}"


@dataclass(frozen=True)
class TombstonesQuery:
    cursor: str | None
    after: EventPosition | None
    limit: int


def _event_cursor(raw: str | None) -> EventPosition | None:
    if raw is None:
        return None
    match = _EVENT_CURSOR.fullmatch(raw)
    if match is None:
        raise _cursor_error()
    try:
        time = _EPOCH + int(match[1]) * _MICROSECOND
    except OverflowError:
        raise _cursor_error() from None
    return EventPosition(time, int(match[2]), match[3])


def parse_tombstones_query(params) -> TombstonesQuery:
    """Validate ``cursor`` and ``limit`` (422 for malformed values)."""
    errors: list[dict[str, Any]] = []
    limit = parse_limit(params, errors, default=TOMBSTONES_LIMIT_DEFAULT, maximum=LIMIT_MAX)
    cursor = _param(params, "cursor")
    try:
        after = _event_cursor(cursor)
    except InputInvalid as exc:
        errors.extend(exc.detail)
        after = None
    if errors:
        raise InputInvalid(errors)
    return TombstonesQuery(cursor=cursor, after=after, limit=limit)


# --- facts ------------------------------------------------------------------------------------

# The columns a served record needs, read as tuples: a page is rendered without model instances.
_FACT_COLUMNS = (
    "seq",
    "id",
    "entity",
    "relation",
    "value_type",
    "value_v",
    "interpret_as",
    "source",
    "timestamp",
    "hlc",
    "received_from",
    "valid_until",
    "valid_until_at",
    "confidence",
    "scope",
    "origin_node_id",
    "origin_allowed_scopes",
    "contradicted",
    "expired_at",
    "cid",
    "derived_from",
)


def servable_facts(tenant: str, scopes: set[str]):
    """Facts of ``tenant`` a peer may receive in ``scopes``, before paging.

    Only facts written here (not ingested: no echo back and no relaying), outside gardens (their
    membership is local), not system facts, not instructions (peers refuse them), and not hidden
    by a tombstone.
    """
    rows = (
        Fact.objects.filter(
            tenant=tenant, received_from__isnull=True, garden="", interpret_as="content", scope__in=sorted(scopes)
        )
        # A case-sensitive prefix test on both databases (SQLite's LIKE ignores case).
        .alias(namespace=Substr("relation", 1, len(SYSTEM_RELATION_PREFIX)))
        .exclude(namespace=SYSTEM_RELATION_PREFIX)
    )
    suppressed = tombstones.suppression_q(tenant)
    return rows if suppressed is None else rows.exclude(suppressed)


def _fact_record(row: tuple, now: datetime) -> dict[str, Any]:
    """The §2.5 record as ``stigmem.records.fact_record`` renders it, from a row of ``_FACT_COLUMNS``.

    Unlike the read paths, the sanitizer never redacts here: the peer stores the value, must be
    able to verify its CID, and runs its own read-time check. Its warnings are still reported.
    """
    (
        _seq,
        fact_id,
        entity,
        relation,
        value_type,
        value_v,
        interpret_as,
        source,
        timestamp,
        hlc,
        received_from,
        valid_until,
        valid_until_at,
        confidence,
        scope,
        origin_node_id,
        origin_allowed_scopes,
        contradicted,
        expired_at,
        cid,
        derived_from,
    ) = row
    warnings = sanitizer.inspect(value_type, value_v).warnings
    return {
        "id": str(fact_id),
        "entity": entity,
        "relation": relation,
        "value": {"type": value_type, "v": decode_value(value_type, value_v), "interpret_as": interpret_as},
        "source": source,
        "timestamp": timestamp.isoformat(),
        "hlc": hlc,
        "received_from": received_from,
        "valid_until": valid_until,
        "confidence": confidence,
        "scope": scope,
        "origin_node_id": origin_node_id,
        "origin_allowed_scopes": origin_allowed_scopes,
        "garden_id": None,
        "attested": None,
        "attested_key_id": None,
        "contradicted": contradicted,
        "warnings": [],
        "source_trust": None,
        "effective_confidence": None,
        "quarantine_status": None,
        "quarantine_garden_id": None,
        "sanitizer_warnings": warnings,
        "sanitizer_redacted": False,
        "cid": cid,
        "derived_from": derived_from,
        "expired": expired_at is not None or (valid_until_at is not None and valid_until_at <= now),
    }


def facts_page(call: PeerCall, query: FactsQuery) -> dict[str, Any]:
    """``GET /v1/federation/facts``: one page after the cursor; 403 for scopes outside the agreement."""
    scopes = _scopes_for(call, query.scope)
    rows = list(
        servable_facts(call.peer.tenant, scopes)
        .filter(seq__gt=query.after_seq)
        .order_by("seq")
        .values_list(*_FACT_COLUMNS)[: query.limit + 1]
    )
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    now = timezone.now()
    facts = [_fact_record(row, now) for row in rows]
    if facts:
        metrics.EGRESS.labels(peer=call.peer.node_id).inc(len(facts))
    return {
        "facts": facts,
        "cursor": str(rows[-1][0]) if rows else query.cursor,
        "has_more": has_more,
    }


# --- tombstones -------------------------------------------------------------------------------


def _after(time_field: str, kind: int, position: EventPosition | None) -> Q:
    """Rows of one kind whose event ``(time, kind, id)`` sorts after ``position``."""
    if position is None:
        return Q()
    later = Q(**{f"{time_field}__gt": position.time})
    if kind > position.kind:
        return later | Q(**{time_field: position.time})
    if kind == position.kind:
        return later | Q(**{time_field: position.time, "id__gt": position.id})
    return later


def tombstones_page(call: PeerCall, query: TombstonesQuery) -> dict[str, Any]:
    """``GET /v1/federation/tombstones``: this node's own tombstones and revocations after the cursor."""
    scopes = _scopes_for(call, None) | {"*"}
    tenant = call.peer.tenant
    # Tombstones received from peers are theirs to serve: never relayed.
    own = Tombstone.objects.filter(tenant=tenant, origin_node_id__isnull=True, scope__in=sorted(scopes))
    fetch = query.limit + 1
    created = list(own.filter(_after("created_at", TOMBSTONE_EVENT, query.after)).order_by("created_at", "id")[:fetch])
    revoked = list(
        TombstoneRevocation.objects.filter(tombstone__in=own)
        .filter(_after("revoked_at", REVOCATION_EVENT, query.after))
        .order_by("revoked_at", "id")[:fetch]
    )
    events = sorted(
        [(EventPosition(t.created_at, TOMBSTONE_EVENT, t.id), t) for t in created]
        + [(EventPosition(r.revoked_at, REVOCATION_EVENT, r.id), r) for r in revoked],
        key=lambda event: (event[0].time, event[0].kind, event[0].id),
    )
    has_more = len(events) > query.limit
    events = events[: query.limit]
    return {
        "tombstones": [tombstones.tombstone_record(item) for _, item in events if isinstance(item, Tombstone)],
        "revocations": [
            tombstones.revocation_record(item) for _, item in events if isinstance(item, TombstoneRevocation)
        ],
        "cursor": events[-1][0].encode() if events else query.cursor,
        "has_more": has_more,
    }
