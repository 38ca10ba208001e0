"""The read paths over facts: query with a keyset cursor, get by id or CID (WIRE.md §2.7).

Every read of facts starts from ``visible_facts``, the one place that enforces what a caller
may see: its own tenant, gardens it is a member of, and no fact hidden by an active tombstone
for the fact's own scope (or ``*``). Conflicts, deliveries and federation serving use it too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.core import signing
from django.db.models import Q, QuerySet
from django.utils import timezone

from stigmem import gardens, tombstones
from stigmem.auth import Caller
from stigmem.cid import is_cid
from stigmem.errors import ApiError, InputInvalid, coded, field_error, not_found
from stigmem.fact_input import SCOPES
from stigmem.limits import QUERY_LIMIT_DEFAULT, QUERY_LIMIT_MAX
from stigmem.models import Fact, Tombstone
from stigmem.normalize import normalize_query_uri
from stigmem.values import parse_iso_datetime

MAX_TOMBSTONE_NOTICES = 50
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def readable_facts(caller: Caller) -> QuerySet[Fact]:
    """The caller's tenant's facts outside gardens and in gardens it belongs to (tombstones aside)."""
    rows = Fact.objects.filter(tenant=caller.tenant)
    member_of = gardens.member_garden_ids(caller)
    if member_of:
        return rows.filter(Q(garden="") | Q(garden__in=[str(garden_id) for garden_id in member_of]))
    return rows.filter(garden="")


def visible_facts(caller: Caller) -> QuerySet[Fact]:
    """Facts the caller may see: readable, and not suppressed by a tombstone."""
    rows = readable_facts(caller)
    suppressed = tombstones.suppression_q(caller.tenant)
    return rows if suppressed is None else rows.exclude(suppressed)


# --- cursors --------------------------------------------------------------------------------


def encode_cursor(salt: str, position: dict) -> str:
    return signing.Signer(salt=f"stigmem.cursor.{salt}").sign_object(position, compress=False)


def decode_cursor(salt: str, raw: str) -> dict:
    try:
        position = signing.Signer(salt=f"stigmem.cursor.{salt}").unsign_object(raw)
    except (signing.BadSignature, ValueError, TypeError, UnicodeDecodeError):
        raise coded(400, "cursor_invalid", "cursor is malformed or was not issued by this node") from None
    if not isinstance(position, dict):
        raise coded(400, "cursor_invalid", "cursor is malformed or was not issued by this node")
    return position


# --- query parameters -----------------------------------------------------------------------


def parse_bool(params, name: str, default: bool, errors: list) -> bool:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    errors.append(field_error(["query", name], "Input should be a valid boolean", "bool_parsing"))
    return default


def parse_limit(params, errors: list, default: int = QUERY_LIMIT_DEFAULT, maximum: int = QUERY_LIMIT_MAX) -> int:
    raw = params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        errors.append(field_error(["query", "limit"], "Input should be a valid integer", "int_parsing"))
        return default
    if not 1 <= limit <= maximum:
        errors.append(field_error(["query", "limit"], f"limit must be between 1 and {maximum}", "limit_range"))
    return limit


@dataclass
class FactQuery:
    entity: str | None = None
    relation: str | None = None
    source: str | None = None
    scope: str | None = None
    min_confidence: float | None = None
    include_contradicted: bool = False
    include_expired: bool = False
    after: datetime | None = None
    before_seq: int | None = None
    limit: int = QUERY_LIMIT_DEFAULT
    garden_uri: str | None = None


def parse_fact_query(params) -> FactQuery:
    errors: list = []
    query = FactQuery()
    for name in ("entity", "relation", "source"):
        if "\x00" in params.get(name, ""):  # PostgreSQL cannot even compare a string holding NUL
            errors.append(field_error(["query", name], f"{name} must not contain NUL characters", "string_unicode"))
    if params.get("entity"):
        query.entity = normalize_query_uri(params["entity"])
    if params.get("source"):
        query.source = normalize_query_uri(params["source"])
    query.relation = params.get("relation") or None
    scope = params.get("scope")
    if scope:
        if scope not in SCOPES:
            raise coded(400, "invalid_scope", f"scope must be one of {', '.join(SCOPES)}")
        query.scope = scope
    raw_conf = params.get("min_confidence")
    if raw_conf not in (None, ""):
        try:
            query.min_confidence = float(raw_conf)
            if not 0.0 <= query.min_confidence <= 1.0:
                raise ValueError
        except ValueError:
            errors.append(
                field_error(
                    ["query", "min_confidence"], "min_confidence must be a number from 0 to 1", "confidence_range"
                )
            )
    query.include_contradicted = parse_bool(params, "include_contradicted", False, errors)
    query.include_expired = parse_bool(params, "include_expired", False, errors)
    raw_after = params.get("after")
    if raw_after:
        try:
            after = parse_iso_datetime(raw_after)
            query.after = after if after.tzinfo else after.replace(tzinfo=UTC)
        except ValueError:
            errors.append(field_error(["query", "after"], "after must be an ISO-8601 datetime", "datetime_parsing"))
    query.limit = parse_limit(params, errors)
    if errors:
        raise InputInvalid(errors)
    if params.get("cursor"):
        position = decode_cursor("facts", params["cursor"])
        if not isinstance(position.get("s"), int):
            raise coded(400, "cursor_invalid", "cursor is malformed or was not issued by this node")
        query.before_seq = position["s"]
    query.garden_uri = params.get("garden_id") or None
    return query


@dataclass
class FactPage:
    facts: list[Fact]
    cursor: str | None
    # Set when tombstones removed matching facts: ``total`` is then null on the wire.
    tombstoned: bool = False
    tombstone_notices: list[dict[str, Any]] = field(default_factory=list)


def run_fact_query(caller: Caller, query: FactQuery) -> FactPage:
    now = timezone.now()
    readable = readable_facts(caller)
    if query.garden_uri is not None:
        readable = readable.filter(garden=str(gardens.garden_for_query(caller, query.garden_uri).id))
    matching = _filtered(readable, query, now)
    suppressed = tombstones.suppression_q(caller.tenant)
    rows = matching if suppressed is None else matching.exclude(suppressed)
    if query.before_seq is not None:
        rows = rows.filter(seq__lt=query.before_seq)
    page = list(rows.order_by("-seq")[: query.limit + 1])
    cursor = None
    if len(page) > query.limit:
        page = page[: query.limit]
        cursor = encode_cursor("facts", {"s": page[-1].seq})
    result = FactPage(page, cursor)
    if suppressed is not None:
        _note_tombstones(caller, query, matching.filter(suppressed), result)
    return result


def _note_tombstones(caller: Caller, query: FactQuery, hidden: QuerySet[Fact], page: FactPage) -> None:
    """Say when tombstones removed results; name them to admins and to whoever asked for that entity.

    Other callers learn only that something was removed (``total`` null): listing the tombstoned
    entity URIs to them would defeat the erasure the tombstone stands for.
    """
    pairs = set(hidden.values_list("entity", "scope").distinct()[:MAX_TOMBSTONE_NOTICES])
    if not pairs:
        return
    page.tombstoned = True
    if not (caller.has("admin") or query.entity is not None):
        return
    entities = {entity for entity, _ in pairs}
    for tombstone in Tombstone.objects.filter(
        tenant=caller.tenant, entity_uri__in=entities, revocation__isnull=True
    ).order_by("created_at"):
        if tombstone.scope == "*" or (tombstone.entity_uri, tombstone.scope) in pairs:
            page.tombstone_notices.append(
                {
                    "entity_uri": tombstone.entity_uri,
                    "tombstone_id": tombstone.id,
                    "legal_hold": tombstone.legal_hold,
                    "tombstone_created_at": tombstone.created_at_text,
                }
            )


def _filtered(rows: QuerySet[Fact], query: FactQuery, now: datetime) -> QuerySet[Fact]:
    if query.entity is not None:
        rows = rows.filter(entity=query.entity)
    if query.relation is not None:
        rows = rows.filter(relation=query.relation)
    if query.source is not None:
        rows = rows.filter(source=query.source)
    if query.scope is not None:
        rows = rows.filter(scope=query.scope)
    if query.min_confidence is not None:
        rows = rows.filter(confidence__gte=query.min_confidence)
    if not query.include_contradicted:
        # Current values: the head of their key, unless decay expired it (FactHead).
        rows = rows.filter(head__isnull=False, expired_at__isnull=True)
    if not query.include_expired:
        rows = rows.filter(Q(valid_until_at__isnull=True) | Q(valid_until_at__gt=now), expired_at__isnull=True)
    if query.after is not None:
        rows = rows.filter(timestamp__gt=query.after)
    return rows


def get_fact(caller: Caller, ref: str) -> Fact:
    """A fact by id or by CID; 400 for a malformed CID, 404 when unknown or not visible."""
    rows = visible_facts(caller)
    if ref.startswith("sha256:"):
        if not is_cid(ref):
            raise ApiError(
                400,
                {"code": "cid_malformed", "message": "a CID must match ^sha256:[0-9a-f]{64}$", "cid": ref[:100]},
            )
        fact = rows.filter(cid=ref).first()
    else:
        try:
            fact_id = uuid.UUID(ref)
        except ValueError:
            raise not_found("fact") from None
        fact = rows.filter(id=fact_id).first()
    if fact is None:
        raise not_found("fact")
    return fact
