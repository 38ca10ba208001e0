"""Signed tombstones: suppress every fact about an entity in a scope (WIRE.md §4.3)."""

from __future__ import annotations

from django.db import models

from stigmem.limits import MAX_URI_LENGTH

TOMBSTONE_SCOPES = ("local", "team", "company", "public", "*")


class Tombstone(models.Model):
    id = models.CharField(primary_key=True, max_length=48)  # "tomb_<uuid4>"
    tenant = models.CharField(max_length=64)
    entity_uri = models.CharField(max_length=MAX_URI_LENGTH)
    scope = models.CharField(max_length=8)
    reason = models.TextField(blank=True, default="")
    signed_by = models.CharField(max_length=255)
    key_id = models.CharField(max_length=16)
    signature = models.CharField(max_length=100)
    created_at = models.DateTimeField()
    # Canonical ISO text of created_at as signed: the signature covers this exact string.
    created_at_text = models.CharField(max_length=40)
    legal_hold = models.BooleanField(default=False)
    # Set when the tombstone came from a peer (federation); local ones have None.
    origin_node_id = models.CharField(max_length=255, null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "entity_uri"], name="tombstone_tenant_entity")]

    def __str__(self) -> str:
        return f"{self.id} {self.entity_uri} [{self.scope}]"


class TombstoneRevocation(models.Model):
    id = models.CharField(primary_key=True, max_length=48)  # "tombrevoke_<uuid4>", the reference's prefix
    tombstone = models.OneToOneField(Tombstone, on_delete=models.PROTECT, related_name="revocation")
    reason = models.TextField(blank=True, default="")
    revoked_by = models.CharField(max_length=MAX_URI_LENGTH)
    signed_by = models.CharField(max_length=255)
    key_id = models.CharField(max_length=16)
    signature = models.CharField(max_length=100)
    revoked_at = models.DateTimeField()
    revoked_at_text = models.CharField(max_length=40)

    def __str__(self) -> str:
        return f"{self.id} revokes {self.tombstone_id}"
