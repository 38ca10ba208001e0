"""Memory gardens: named groups of facts visible only to their members (WIRE.md §4.2)."""

from __future__ import annotations

import uuid

from django.db import models

from stigmem.limits import MAX_URI_LENGTH


class Garden(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin"
        WRITER = "writer"
        READER = "reader"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.CharField(max_length=64)
    slug = models.CharField(max_length=63)
    name = models.CharField(max_length=200)
    scope = models.CharField(max_length=16, default="company")
    description = models.TextField(blank=True, default="")
    created_by = models.CharField(max_length=MAX_URI_LENGTH)
    created_at = models.DateTimeField()
    quarantine = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="garden_unique_slug_per_tenant")]

    def __str__(self) -> str:
        return f"{self.slug} ({self.tenant})"


class GardenMember(models.Model):
    garden = models.ForeignKey(Garden, on_delete=models.CASCADE, related_name="members")
    entity_uri = models.CharField(max_length=MAX_URI_LENGTH)
    role = models.CharField(max_length=8, choices=Garden.Role.choices, default=Garden.Role.READER)
    added_by = models.CharField(max_length=MAX_URI_LENGTH)
    added_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["garden", "entity_uri"], name="gardenmember_unique_entity"),
        ]
        # Every read resolves the caller's gardens by identity.
        indexes = [models.Index(fields=["entity_uri"], name="gardenmember_entity")]

    def __str__(self) -> str:
        return f"{self.entity_uri} is {self.role} of {self.garden_id}"
