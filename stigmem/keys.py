"""Creating, listing and revoking API keys (WIRE.md §4.1)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from stigmem import audit
from stigmem.auth import MIN_RAW_KEY_LENGTH, Caller, generate_raw_key, hash_key
from stigmem.errors import ApiError, InputInvalid, field_error, forbidden, not_found
from stigmem.models import PERMISSIONS, ApiKey
from stigmem.normalize import UriInvalid, normalize_uri
from stigmem.values import parse_iso_datetime, text_problem


@dataclass
class NewKey:
    key: ApiKey
    raw_key: str
    generated: bool


def default_expiry(now: datetime) -> datetime | None:
    days = settings.STIGMEM_API_KEY_MAX_AGE_DAYS
    return now + timedelta(days=days) if days > 0 else None


def issue_key(
    *,
    tenant: str,
    entity_uri: str,
    permissions: list[str],
    description: str = "",
    expires_at: datetime | None = None,
    raw_key: str | None = None,
    created_by: str = "",
) -> NewKey:
    """Store a new key; the raw key exists only in the returned value. 409 on a duplicate."""
    generated = raw_key is None
    raw_key = raw_key or generate_raw_key()
    try:
        with transaction.atomic():
            key = ApiKey.objects.create(
                tenant=tenant,
                key_hash=hash_key(raw_key),
                key_prefix=raw_key[:8],
                entity_uri=entity_uri,
                permissions=sorted(set(permissions)),
                description=description,
                expires_at=expires_at,
                created_by=created_by,
            )
            # Never the raw key, its prefix or its hash: the audit log is readable with audit.read.
            audit.record(
                tenant,
                "api_key_created",
                actor=created_by,
                target=str(key.id),
                detail={
                    "key_id": str(key.id),
                    "entity_uri": entity_uri,
                    "permissions": key.permissions,
                    "expires_at": expires_at.isoformat() if expires_at else None,
                },
            )
    except IntegrityError:
        raise ApiError(409, "an API key with this value already exists") from None
    return NewKey(key, raw_key, generated)


def create_key_from_body(caller: Caller, body: Any) -> NewKey:
    """Validate a ``POST /v1/auth/keys`` body and issue the key inside the caller's tenant."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    errors: list = []
    entity_uri = body.get("entity_uri")
    if not isinstance(entity_uri, str) or not entity_uri.strip() or len(entity_uri) > 512:
        errors.append(field_error(["body", "entity_uri"], "entity_uri must be a non-empty string", "string_type"))
    permissions = body.get("permissions")
    if not isinstance(permissions, list) or not permissions or not all(isinstance(p, str) for p in permissions):
        errors.append(
            field_error(["body", "permissions"], "permissions must be a non-empty list of strings", "list_type")
        )
        permissions = []
    raw_key = body.get("raw_key")
    if raw_key is not None and (
        not isinstance(raw_key, str) or len(raw_key) < MIN_RAW_KEY_LENGTH or len(raw_key) > 512
    ):
        errors.append(
            field_error(
                ["body", "raw_key"],
                f"raw_key must be a string of {MIN_RAW_KEY_LENGTH} to 512 characters",
                "string_too_short",
            )
        )
    description = body.get("description") or ""
    if not isinstance(description, str) or len(description) > 500:
        errors.append(
            field_error(
                ["body", "description"], "description must be a string of at most 500 characters", "string_type"
            )
        )
    for name, text in (("entity_uri", entity_uri), ("raw_key", raw_key), ("description", description)):
        if isinstance(text, str) and (problem := text_problem(text)) is not None:
            errors.append(field_error(["body", name], f"{name} {problem}", "string_unicode"))
    now = timezone.now()
    expires_at = default_expiry(now)
    if body.get("expires_at") is not None:
        try:
            if not isinstance(body["expires_at"], str):
                raise ValueError
            expires_at = parse_iso_datetime(body["expires_at"])
            expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
            if expires_at <= now:
                errors.append(field_error(["body", "expires_at"], "expires_at must be in the future", "value_error"))
        except ValueError:
            errors.append(
                field_error(["body", "expires_at"], "expires_at must be an ISO-8601 datetime", "datetime_parsing")
            )
    tenant = body.get("tenant_id") or caller.tenant
    if errors:
        raise InputInvalid(errors)
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        raise ApiError(400, f"unknown permission(s): {', '.join(unknown)}; known: {', '.join(PERMISSIONS)}")
    if tenant != caller.tenant:
        # Tenants are provisioned by operators (`manage.py bootstrap_key --tenant`), never by a
        # key of another tenant.
        raise forbidden("keys can only be created inside the caller's own tenant")
    try:
        entity = normalize_uri(entity_uri).uri
    except UriInvalid as exc:
        raise ApiError(400, {"code": "invalid_entity_uri", "message": str(exc)}) from None
    return issue_key(
        tenant=tenant,
        entity_uri=entity,
        permissions=permissions,
        description=description,
        expires_at=expires_at,
        raw_key=raw_key,
        created_by=caller.entity_uri,
    )


def own_active_keys(caller: Caller):
    """The caller's identity's usable keys, newest first (the reference's listing)."""
    return (
        ApiKey.objects.filter(tenant=caller.tenant, entity_uri=caller.entity_uri, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .order_by("-created_at")
    )


def revocable_keys(caller: Caller):
    """Admins may revoke any key of their tenant; others only their identity's keys."""
    keys = ApiKey.objects.filter(tenant=caller.tenant)
    return keys if caller.has("admin") else keys.filter(entity_uri=caller.entity_uri)


def revoke_keys(keys: QuerySet[ApiKey], *, actor: str) -> int:
    """Revoke the active keys among ``keys``, each audited in the same transaction; returns how many."""
    now = timezone.now()
    revoked = 0
    with transaction.atomic():
        for key in keys.filter(revoked_at__isnull=True):
            # Conditional, so a key revoked concurrently is neither revoked nor audited twice.
            if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now):
                audit.record(
                    key.tenant,
                    "api_key_revoked",
                    actor=actor,
                    target=str(key.pk),
                    detail={"key_id": str(key.pk), "entity_uri": key.entity_uri},
                )
                revoked += 1
    return revoked


def revoke_key(caller: Caller, raw_id: str) -> None:
    try:
        key_id = uuid.UUID(raw_id)
    except ValueError:
        raise not_found("API key") from None
    keys = revocable_keys(caller).filter(id=key_id)
    if not revoke_keys(keys, actor=caller.entity_uri) and not keys.exists():
        raise not_found("API key")


def key_record(key: ApiKey, raw_key: str | None = None) -> dict[str, Any]:
    record = {
        "id": str(key.id),
        "entity_uri": key.entity_uri,
        "permissions": key.permissions,
        "description": key.description,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "tenant_id": key.tenant,
        "oidc_sub": None,
    }
    if raw_key is not None:
        record["api_key"] = raw_key
    return record
