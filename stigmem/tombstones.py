"""Signed tombstones (WIRE.md §4.3): creating, revoking, verifying, and the suppression set.

A tombstone suppresses every fact about one entity in one scope (or ``*``, every scope) of a
tenant. Tombstones and revocations are signed with the node key (``stigmem.signing``) over the
canonical JSON of their identifying fields, so that peers can verify them against this node's
public key. The free-text ``reason`` is left out of the signed body (as in the reference), so it
can be redacted before replication without breaking the signature.

The read path asks ``active_tombstones`` / ``is_suppressed`` / ``suppression_q``; their answer is
cached per process for ``STIGMEM_TOMBSTONE_CACHE_S`` seconds and dropped at once in the process
that creates or revokes a tombstone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from stigmem import audit, signing
from stigmem.clock import clock_transaction
from stigmem.errors import ApiError, InputInvalid, coded, field_error, not_found
from stigmem.limits import MAX_URI_LENGTH
from stigmem.models import TOMBSTONE_SCOPES, Tombstone, TombstoneRevocation
from stigmem.node import node_id
from stigmem.normalize import UriInvalid, normalize_query_uri, normalize_uri
from stigmem.values import parse_iso_datetime, text_problem

TOMBSTONE_ID_PREFIX = "tomb_"
REVOCATION_ID_PREFIX = "tombrevoke_"  # the reference's prefix
MAX_REASON_LENGTH = 2000

# The signed bodies: exactly these fields, as they appear in the wire records.
TOMBSTONE_SIGNED_FIELDS = ("id", "entity_uri", "scope", "signed_by", "key_id", "created_at", "legal_hold")
REVOCATION_SIGNED_FIELDS = ("id", "tombstone_id", "revoked_by", "signed_by", "key_id", "revoked_at")


# --- records and signatures -------------------------------------------------------------------


def tombstone_record(tombstone: Tombstone) -> dict[str, Any]:
    return {
        "id": tombstone.id,
        "entity_uri": tombstone.entity_uri,
        "scope": tombstone.scope,
        "reason": tombstone.reason or None,
        "signed_by": tombstone.signed_by,
        "key_id": tombstone.key_id,
        "signature": tombstone.signature,
        # The text that was signed, never a re-rendering of the datetime column.
        "created_at": tombstone.created_at_text,
        "legal_hold": tombstone.legal_hold,
    }


def revocation_record(revocation: TombstoneRevocation) -> dict[str, Any]:
    return {
        "id": revocation.id,
        "tombstone_id": revocation.tombstone_id,
        "reason": revocation.reason,
        "revoked_by": revocation.revoked_by,
        "signed_by": revocation.signed_by,
        "key_id": revocation.key_id,
        "signature": revocation.signature,
        "revoked_at": revocation.revoked_at_text,
        # The reference names the revocation time `created_at`; kept so its clients parse ours.
        "created_at": revocation.revoked_at_text,
    }


def _as_record(record: Mapping[str, Any] | Tombstone | TombstoneRevocation) -> Mapping[str, Any]:
    if isinstance(record, Tombstone):
        return tombstone_record(record)
    if isinstance(record, TombstoneRevocation):
        return revocation_record(record)
    return record


def _signed_body(record: Mapping[str, Any], fields: tuple[str, ...]) -> bytes:
    return signing.canonical_json({name: record[name] for name in fields})


def _verify(record: Mapping[str, Any] | Tombstone | TombstoneRevocation, fields: tuple[str, ...], key: str) -> bool:
    try:
        record = _as_record(record)
        # The record names the key that signed it: a signature by any other key is not its own.
        if record["key_id"] != signing.key_id_of(key):
            return False
        body = _signed_body(record, fields)
        signature = record["signature"]
    except (KeyError, TypeError, ValueError):
        return False
    return signing.verify(key, body, signature)


def verify_tombstone(record: Mapping[str, Any] | Tombstone, public_key_b64: str) -> bool:
    """Whether a tombstone (wire record or model) carries a valid signature by ``public_key_b64``."""
    return _verify(record, TOMBSTONE_SIGNED_FIELDS, public_key_b64)


def verify_revocation(record: Mapping[str, Any] | TombstoneRevocation, public_key_b64: str) -> bool:
    """Whether a revocation (wire record or model) carries a valid signature by ``public_key_b64``."""
    return _verify(record, REVOCATION_SIGNED_FIELDS, public_key_b64)


# --- input ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TombstoneInput:
    entity_uri: str
    scope: str
    reason: str
    legal_hold: bool


def _reason_problem(reason: str) -> tuple[str, str] | None:
    if len(reason) > MAX_REASON_LENGTH:
        return f"reason is longer than {MAX_REASON_LENGTH} characters", "string_too_long"
    if (problem := text_problem(reason)) is not None:
        return f"reason {problem}", "string_unicode"
    return None


def parse_create_body(body: Any) -> TombstoneInput:
    """Validate a ``POST /v1/tombstones`` body (422 for missing or ill-typed fields)."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    errors: list[dict[str, Any]] = []
    entity_uri = body.get("entity_uri")
    if not isinstance(entity_uri, str) or not entity_uri:
        errors.append(field_error(["body", "entity_uri"], "entity_uri must be a non-empty string", "string_type"))
    elif len(entity_uri) > MAX_URI_LENGTH:
        errors.append(
            field_error(
                ["body", "entity_uri"], f"entity_uri is longer than {MAX_URI_LENGTH} characters", "string_too_long"
            )
        )
    elif (problem := text_problem(entity_uri)) is not None:
        errors.append(field_error(["body", "entity_uri"], f"entity_uri {problem}", "string_unicode"))
    # Like the reference, an omitted scope tombstones the entity in every scope.
    scope = body.get("scope", "*")
    if not isinstance(scope, str):
        errors.append(field_error(["body", "scope"], "scope must be a string", "string_type"))
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        errors.append(field_error(["body", "reason"], "reason must be a string or null", "string_type"))
    elif reason and (problem := _reason_problem(reason)) is not None:
        errors.append(field_error(["body", "reason"], *problem))
    legal_hold = body.get("legal_hold", False)
    if not isinstance(legal_hold, bool):
        errors.append(field_error(["body", "legal_hold"], "legal_hold must be a boolean", "bool_type"))
    if errors:
        raise InputInvalid(errors)
    return TombstoneInput(entity_uri, scope, reason or "", legal_hold)


def parse_revoke_body(body: Any) -> str:
    """Validate a ``POST /v1/tombstones/{id}/revoke`` body; returns the reason."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason:
        raise InputInvalid([field_error(["body", "reason"], "reason must be a non-empty string", "string_type")])
    if (problem := _reason_problem(reason)) is not None:
        raise InputInvalid([field_error(["body", "reason"], *problem)])
    return reason


def _check_scope(scope: str) -> None:
    if scope not in TOMBSTONE_SCOPES:
        # The reference's exact body, which its clients match on.
        raise ApiError(400, "tombstone_invalid_scope")


def _normalized_entity(raw: str) -> str:
    """The entity as facts store it, so that suppression compares equal; 400 like a fact write."""
    try:
        return normalize_uri(raw).uri
    except UriInvalid as exc:
        raise coded(400, "invalid_entity_uri", str(exc)) from None


# --- create, revoke, status -------------------------------------------------------------------


def create_tombstone(
    *, tenant: str, entity_uri: str, scope: str, reason: str = "", legal_hold: bool = False, actor: str
) -> tuple[Tombstone, bool]:
    """Create and sign a tombstone; returns ``(tombstone, created)``.

    When this node already holds an active tombstone of its own for the same tenant, entity and
    scope, that one is returned unchanged (``created`` False) and nothing is written. Raises
    ApiError 400 for an unknown scope or an entity URI that cannot be normalized.
    """
    _check_scope(scope)
    entity = _normalized_entity(entity_uri)
    # Load the key before the transaction, so a first-use key is generated and committed on its own.
    key_id = signing.key_id()
    signed_by = node_id()
    # The node clock's lock serializes creators (on SQLite the IMMEDIATE transaction does): a
    # concurrent duplicate waits, then finds the first one.
    with clock_transaction():
        existing = (
            _active(Tombstone.objects.filter(tenant=tenant, entity_uri=entity, scope=scope))
            .filter(origin_node_id__isnull=True)
            .order_by("created_at", "id")
            .first()
        )
        if existing is not None:
            return existing, False
        now = timezone.now()
        tombstone = Tombstone(
            id=f"{TOMBSTONE_ID_PREFIX}{uuid.uuid4()}",
            tenant=tenant,
            entity_uri=entity,
            scope=scope,
            reason=reason,
            signed_by=signed_by,
            key_id=key_id,
            created_at=now,
            created_at_text=now.isoformat(),
            legal_hold=legal_hold,
        )
        tombstone.signature = signing.sign(_signed_body(tombstone_record(tombstone), TOMBSTONE_SIGNED_FIELDS))
        tombstone.save(force_insert=True)
        detail = {"entity_uri": entity, "scope": scope, "legal_hold": legal_hold}
        audit.record(tenant, "tombstone_created", actor=actor, target=tombstone.id, detail=detail)
        _changed(tenant)
    return tombstone, True


def revoke_tombstone(*, tenant: str, tombstone_id: str, reason: str, actor: str) -> TombstoneRevocation:
    """Revoke and sign; 404 for an unknown id or another tenant's, 409 when already revoked."""
    if len(tombstone_id) > Tombstone._meta.get_field("id").max_length or text_problem(tombstone_id) is not None:
        raise not_found("tombstone")
    key_id = signing.key_id()
    signed_by = node_id()
    # Under the node clock's lock, like create_tombstone: revoked_at then follows commit order, which
    # the federation tombstone cursor relies on.
    with clock_transaction():
        # Locking the tombstone makes a concurrent second revocation wait, then answer 409.
        tombstone = Tombstone.objects.select_for_update().filter(tenant=tenant, id=tombstone_id).first()
        if tombstone is None:
            raise not_found("tombstone")
        if TombstoneRevocation.objects.filter(tombstone=tombstone).exists():
            raise ApiError(409, "tombstone_already_revoked")
        now = timezone.now()
        revocation = TombstoneRevocation(
            id=f"{REVOCATION_ID_PREFIX}{uuid.uuid4()}",
            tombstone=tombstone,
            reason=reason,
            revoked_by=actor,
            signed_by=signed_by,
            key_id=key_id,
            revoked_at=now,
            revoked_at_text=now.isoformat(),
        )
        revocation.signature = signing.sign(_signed_body(revocation_record(revocation), REVOCATION_SIGNED_FIELDS))
        revocation.save(force_insert=True)
        audit.record(
            tenant,
            "tombstone_revoked",
            actor=actor,
            target=tombstone.id,
            detail={"revocation_id": revocation.id, "entity_uri": tombstone.entity_uri, "scope": tombstone.scope},
        )
        _changed(tenant)
    return revocation


def tombstone_status(tenant: str, entity_uri: str) -> dict[str, Any]:
    """``GET /v1/tombstones/{entity_uri}``: every tombstone of the entity and its revocations."""
    entity = normalize_query_uri(entity_uri)
    if len(entity) > MAX_URI_LENGTH or text_problem(entity) is not None:
        # Nothing stored can match, and PostgreSQL refuses NUL in a query parameter.
        return {"tombstoned": False, "tombstones": [], "revocations": []}
    tombstones = list(
        Tombstone.objects.filter(tenant=tenant, entity_uri=entity)
        .select_related("revocation")
        .order_by("created_at", "id")
    )
    revocations = [r for t in tombstones if (r := _revocation_of(t)) is not None]
    revocations.sort(key=lambda r: (r.revoked_at, r.id))
    return {
        "tombstoned": len(revocations) < len(tombstones),
        "tombstones": [tombstone_record(t) for t in tombstones],
        "revocations": [revocation_record(r) for r in revocations],
    }


def _revocation_of(tombstone: Tombstone) -> TombstoneRevocation | None:
    try:
        return tombstone.revocation
    except TombstoneRevocation.DoesNotExist:
        return None


def _active(tombstones):
    return tombstones.filter(revocation__isnull=True)


# --- tombstones and revocations received from peers (federation) -----------------------------


class RemoteRecordRejected(ValueError):
    """A peer's tombstone or revocation that cannot be stored; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _remote_text(record: Mapping[str, Any], name: str, max_length: int) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value or len(value) > max_length or text_problem(value):
        raise RemoteRecordRejected("malformed", f"{name} must be a non-empty string of at most {max_length} characters")
    return value


def _remote_time(record: Mapping[str, Any], name: str):
    text = _remote_text(record, name, 40)
    try:
        moment = parse_iso_datetime(text)
    except ValueError:
        raise RemoteRecordRejected("malformed", f"{name} must be an ISO-8601 datetime") from None
    return text, moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _remote_reason(record: Mapping[str, Any]) -> str:
    # Not covered by the signature: kept when it is usable text, dropped otherwise.
    reason = record.get("reason")
    if not isinstance(reason, str) or text_problem(reason):
        return ""
    return reason[:MAX_REASON_LENGTH]


def store_remote_tombstone(tenant: str, record: Mapping[str, Any], origin_node_id: str) -> bool:
    """Store a tombstone pulled from the peer ``origin_node_id``; False when its id is already here.

    The caller has verified the signature against the peer's key. The signed fields are stored
    exactly as received, so the stored row still verifies. Raises RemoteRecordRejected for a
    field that cannot be stored, and for an entity URI not in normalized form: facts store
    normalized entities, so such a tombstone could never suppress anything.
    """
    tombstone_id = _remote_text(record, "id", Tombstone._meta.get_field("id").max_length)
    entity = _remote_text(record, "entity_uri", MAX_URI_LENGTH)
    try:
        normalized = normalize_uri(entity).uri
    except UriInvalid:
        normalized = None
    if normalized != entity:
        raise RemoteRecordRejected("entity_not_normalized", "entity_uri is not in normalized form")
    scope = record.get("scope")
    if scope not in TOMBSTONE_SCOPES:
        raise RemoteRecordRejected("malformed", "scope is not a tombstone scope")
    legal_hold = record.get("legal_hold", False)
    if not isinstance(legal_hold, bool):
        raise RemoteRecordRejected("malformed", "legal_hold must be a boolean")
    created_text, created_at = _remote_time(record, "created_at")
    tombstone = Tombstone(
        id=tombstone_id,
        tenant=tenant,
        entity_uri=entity,
        scope=scope,
        reason=_remote_reason(record),
        signed_by=_remote_text(record, "signed_by", 255),
        key_id=_remote_text(record, "key_id", 16),
        signature=_remote_text(record, "signature", 100),
        created_at=created_at,
        created_at_text=created_text,
        legal_hold=legal_hold,
        origin_node_id=origin_node_id,
    )
    with transaction.atomic():
        if Tombstone.objects.filter(id=tombstone_id).exists():
            return False
        tombstone.save(force_insert=True)
        audit.record(
            tenant,
            "tombstone_created",
            actor=origin_node_id,
            target=tombstone_id,
            detail={"entity_uri": entity, "scope": scope, "legal_hold": legal_hold, "origin_node_id": origin_node_id},
        )
        _changed(tenant)
    return True


def store_remote_revocation(tenant: str, record: Mapping[str, Any], origin_node_id: str) -> bool:
    """Store a revocation pulled from the peer ``origin_node_id``; False when already stored.

    A peer may only revoke a tombstone it sent: one held here from the same peer in the same
    tenant (else RemoteRecordRejected ``unknown_tombstone``). The caller has verified the
    signature. A tombstone already revoked (by this or another revocation id) is left as it is.
    """
    max_id = TombstoneRevocation._meta.get_field("id").max_length
    revocation_id = _remote_text(record, "id", max_id)
    tombstone_id = _remote_text(record, "tombstone_id", Tombstone._meta.get_field("id").max_length)
    revoked_text, revoked_at = _remote_time(record, "revoked_at")
    revocation = TombstoneRevocation(
        id=revocation_id,
        tombstone_id=tombstone_id,
        reason=_remote_reason(record),
        revoked_by=_remote_text(record, "revoked_by", MAX_URI_LENGTH),
        signed_by=_remote_text(record, "signed_by", 255),
        key_id=_remote_text(record, "key_id", 16),
        signature=_remote_text(record, "signature", 100),
        revoked_at=revoked_at,
        revoked_at_text=revoked_text,
    )
    with transaction.atomic():
        tombstone = (
            Tombstone.objects.select_for_update()
            .filter(id=tombstone_id, tenant=tenant, origin_node_id=origin_node_id)
            .first()
        )
        if tombstone is None:
            raise RemoteRecordRejected("unknown_tombstone", "no tombstone with this id was received from this peer")
        if TombstoneRevocation.objects.filter(Q(id=revocation_id) | Q(tombstone=tombstone)).exists():
            return False
        revocation.save(force_insert=True)
        audit.record(
            tenant,
            "tombstone_revoked",
            actor=origin_node_id,
            target=tombstone_id,
            detail={
                "revocation_id": revocation_id,
                "entity_uri": tombstone.entity_uri,
                "scope": tombstone.scope,
                "origin_node_id": origin_node_id,
            },
        )
        _changed(tenant)
    return True


# --- suppression (read path) ------------------------------------------------------------------


class _ActiveCache:
    """Per-tenant sets of active ``(entity_uri, scope)`` pairs, each kept for a TTL.

    A load that started before an invalidation is not stored, so a change made in this process
    is never hidden behind a set read just before it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._generation = 0
        self._entries: dict[str, tuple[float, frozenset[tuple[str, str]]]] = {}

    def get(self, tenant: str) -> frozenset[tuple[str, str]]:
        now = self.clock()
        entry = self._entries.get(tenant)
        if entry is not None and now - entry[0] < settings.STIGMEM_TOMBSTONE_CACHE_S:
            return entry[1]
        generation = self._generation
        pairs = frozenset(_active(Tombstone.objects.filter(tenant=tenant)).values_list("entity_uri", "scope"))
        with self._lock:
            if self._generation == generation:
                self._entries[tenant] = (now, pairs)
        return pairs

    def invalidate(self, tenant: str | None = None) -> None:
        with self._lock:
            self._generation += 1
            if tenant is None:
                self._entries.clear()
            else:
                self._entries.pop(tenant, None)


_cache = _ActiveCache()


def _changed(tenant: str) -> None:
    # Now, so that this request and this transaction see the change; and again at commit, so that
    # a set another thread loaded before the commit is not kept.
    _cache.invalidate(tenant)
    transaction.on_commit(lambda: _cache.invalidate(tenant))


def clear_cache() -> None:
    """Forget every cached set (tests)."""
    _cache.invalidate()


def active_tombstones(tenant: str) -> frozenset[tuple[str, str]]:
    """The tenant's active tombstones as ``(entity_uri, scope)`` pairs; ``scope`` may be ``*``."""
    return _cache.get(tenant)


def is_suppressed(tenant: str, entity: str, fact_scope: str) -> bool:
    """Whether a fact about ``entity`` (normalized) in ``fact_scope`` is hidden by a tombstone."""
    active = active_tombstones(tenant)
    return bool(active) and ((entity, fact_scope) in active or (entity, "*") in active)


def suppression_q(tenant: str) -> Q | None:
    """A ``Q`` over ``Fact`` matching the tenant's suppressed facts (for ``.exclude``), or None."""
    active = active_tombstones(tenant)
    if not active:
        return None
    everywhere = sorted(entity for entity, scope in active if scope == "*")
    by_scope: dict[str, list[str]] = defaultdict(list)
    for entity, scope in active:
        if scope != "*":
            by_scope[scope].append(entity)
    q = Q(entity__in=everywhere) if everywhere else Q()
    for scope, entities in sorted(by_scope.items()):
        q |= Q(scope=scope, entity__in=sorted(entities))
    return q
