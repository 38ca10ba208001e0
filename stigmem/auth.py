"""API-key authentication (DESIGN.md §5).

Keys are stored as HMAC-SHA256 under a key derived from the server secret, in a unique
indexed column: authenticating is one indexed lookup, and a leaked table yields no usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from stigmem.models import ApiKey

RAW_KEY_PREFIX = "sk_"
MIN_RAW_KEY_LENGTH = 32
ANON_ENTITY = "anon:trusted"
ANON_PERMISSIONS = frozenset({"read", "write", "federate"})


@cache
def _hash_secret() -> bytes:
    return hashlib.sha256(b"stigmem api key hash\0" + settings.SECRET_KEY.encode()).digest()


def hash_key(raw_key: str) -> str:
    return hmac.new(_hash_secret(), raw_key.encode("utf-8"), hashlib.sha256).hexdigest()


def generate_raw_key() -> str:
    return RAW_KEY_PREFIX + secrets.token_urlsafe(32)


_KEY_BY_HASH = f"SELECT * FROM {ApiKey._meta.db_table} WHERE key_hash = %s"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the identity, tenant and permissions behind a request."""

    entity_uri: str
    tenant: str
    permissions: frozenset[str]
    key_id: uuid.UUID | None = None

    is_authenticated = True

    def has(self, permission: str) -> bool:
        # `admin` implies every other permission, inside the key's own tenant.
        return permission in self.permissions or "admin" in self.permissions


def anonymous_caller() -> Caller:
    return Caller(ANON_ENTITY, settings.STIGMEM_DEFAULT_TENANT, ANON_PERMISSIONS)


def caller_for_key(raw_key: str) -> tuple[Caller, ApiKey] | None:
    # A raw query for the one indexed row: compiling a queryset cost 3x the lookup, on every request.
    key = next(iter(ApiKey.objects.raw(_KEY_BY_HASH, [hash_key(raw_key)])), None)
    if key is None or not key.is_active:
        return None
    return Caller(key.entity_uri, key.tenant, frozenset(key.permissions), key.id), key


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Caller, ApiKey | None] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            if settings.STIGMEM_AUTH_REQUIRED:
                return None
            return anonymous_caller(), None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            _count_failure(request, "malformed_authorization")
            raise AuthenticationFailed("invalid authorization header; expected 'Bearer <api key>'")
        found = caller_for_key(token)
        if found is None:
            _count_failure(request, "invalid_key")
            raise AuthenticationFailed("invalid, expired or revoked API key")
        return found

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


def _count_failure(request: Request, reason: str) -> None:
    # Imported here: stigmem.audit imports stigmem.queries, which imports this module.
    from stigmem.audit import auth_failures

    auth_failures.note(reason, request.META.get("REMOTE_ADDR") or "unknown")
