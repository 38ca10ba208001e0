"""API keys: who may call the node, inside which tenant, with which permissions."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from stigmem.limits import MAX_URI_LENGTH

PERMISSIONS = ("read", "write", "federate", "admin", "admin:federation", "audit.read")


class ApiKey(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.CharField(max_length=64)
    # HMAC-SHA256 of the raw key under the server secret; the raw key is never stored.
    key_hash = models.CharField(max_length=64, unique=True)
    # First characters of the raw key, so operators can tell keys apart.
    key_prefix = models.CharField(max_length=12)
    entity_uri = models.CharField(max_length=MAX_URI_LENGTH)
    permissions = models.JSONField(default=list)
    description = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=MAX_URI_LENGTH, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["tenant", "entity_uri"], name="apikey_owner")]

    def __str__(self) -> str:
        return f"{self.key_prefix}… {self.entity_uri}"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()
