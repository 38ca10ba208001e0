"""First-start provisioning: the node identity, an admin login and a bootstrap API key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model

from stigmem.keys import NewKey, issue_key
from stigmem.models import ApiKey
from stigmem.node import node_authority

ADMIN_USERNAME = "admin"


def bootstrap_entity() -> str:
    return f"stigmem://{node_authority()}/agent/bootstrap-admin"


def ensure_admin_user() -> str | None:
    """Create the Django superuser on first start; returns its password only when created."""
    users = get_user_model()
    if users.objects.filter(is_superuser=True).exists():
        return None
    password = settings.STIGMEM_ADMIN_PASSWORD or secrets.token_urlsafe(12)
    users.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
    return password


@dataclass
class BootstrapResult:
    issued: NewKey | None
    existing: int


def ensure_bootstrap_key(
    tenant: str | None = None, *, force: bool = False, entity_uri: str | None = None
) -> BootstrapResult:
    """Issue an admin key for ``tenant`` when it has no active admin key (or when forced)."""
    tenant = tenant or settings.STIGMEM_DEFAULT_TENANT
    active_admin_keys = [
        key
        for key in ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True)
        if key.is_active and "admin" in key.permissions
    ]
    if active_admin_keys and not force:
        return BootstrapResult(None, len(active_admin_keys))
    issued = issue_key(
        tenant=tenant,
        entity_uri=entity_uri or bootstrap_entity(),
        permissions=["admin", "read", "write", "federate", "admin:federation", "audit.read"],
        description="bootstrap admin key",
        expires_at=None,
        created_by="bootstrap",
    )
    return BootstrapResult(issued, len(active_admin_keys))
