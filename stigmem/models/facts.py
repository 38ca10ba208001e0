"""Facts, their current values and their conflicts."""

from __future__ import annotations

import uuid

from django.db import models

from stigmem.limits import MAX_RELATION_LENGTH, MAX_URI_LENGTH

# Columns that define a fact's content. They are written once, at insert, and never change:
# CIDs, replication and audit all rely on that.
CONTENT_FIELDS = frozenset(
    {
        "tenant",
        "seq",
        "entity",
        "relation",
        "value_type",
        "value_v",
        "interpret_as",
        "source",
        "confidence",
        "scope",
        "garden",
        "timestamp",
        "hlc",
        "valid_until",
        "valid_until_at",
        "cid",
        "derived_from",
        "received_from",
        "origin_node_id",
        "origin_allowed_scopes",
    }
)


CONFLICT_ID_PREFIX = "stigmem:conflict:"


class ImmutableContentError(Exception):
    """Raised when code tries to change a fact's content columns."""


class FactQuerySet(models.QuerySet):
    def update(self, **kwargs):  # type: ignore[override]
        touched = CONTENT_FIELDS.intersection(kwargs)
        if touched:
            raise ImmutableContentError(f"fact content is immutable: {sorted(touched)}")
        return super().update(**kwargs)


class Fact(models.Model):
    """One assertion, as written. Rows are never deleted by the node."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Position in the node's fact log: strictly increasing in commit order (DESIGN.md §3).
    seq = models.BigIntegerField(unique=True)
    tenant = models.CharField(max_length=64)
    entity = models.CharField(max_length=MAX_URI_LENGTH)
    relation = models.CharField(max_length=MAX_RELATION_LENGTH)
    value_type = models.CharField(max_length=16)
    value_v = models.TextField()
    interpret_as = models.CharField(max_length=16, default="content")
    source = models.CharField(max_length=MAX_URI_LENGTH)
    confidence = models.FloatField()
    scope = models.CharField(max_length=16)
    # The garden's id as text ("" outside gardens), not its slug: a garden deleted and re-created
    # under the same slug must not expose the old garden's facts to the new members. Not NULL, so
    # that it can be part of unique keys on every database.
    garden = models.CharField(max_length=36, blank=True, default="")
    timestamp = models.DateTimeField()
    hlc = models.CharField(max_length=40)
    valid_until = models.CharField(max_length=64, null=True, blank=True)
    valid_until_at = models.DateTimeField(null=True, blank=True)
    cid = models.CharField(max_length=71)
    derived_from = models.JSONField(default=list, blank=True)
    received_from = models.CharField(max_length=255, null=True, blank=True)
    origin_node_id = models.CharField(max_length=255, null=True, blank=True)
    origin_allowed_scopes = models.JSONField(null=True, blank=True)
    # Lifecycle columns: the only ones that may change after insert.
    contradicted = models.BooleanField(default=False)
    expired_at = models.DateTimeField(null=True, blank=True)
    expired_by = models.CharField(max_length=255, null=True, blank=True)

    objects = FactQuerySet.as_manager()

    class Meta:
        constraints = [
            # Identical content is one fact per garden space: the same CID inside a garden and
            # outside it are two facts (dedup must not reveal or leak across the boundary).
            models.UniqueConstraint(fields=["tenant", "cid", "garden"], name="fact_unique_cid_per_space"),
        ]
        indexes = [
            models.Index(fields=["tenant", "seq"], name="fact_tenant_seq"),
            models.Index(fields=["tenant", "entity", "seq"], name="fact_tenant_entity_seq"),
            models.Index(fields=["tenant", "relation", "seq"], name="fact_tenant_relation_seq"),
            models.Index(fields=["tenant", "source", "seq"], name="fact_tenant_source_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.entity} {self.relation} = {self.value_v[:60]}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            update_fields = kwargs.get("update_fields")
            if update_fields is None or CONTENT_FIELDS.intersection(update_fields):
                raise ImmutableContentError("fact content is immutable; save lifecycle fields only")
        super().save(*args, **kwargs)


class FactHead(models.Model):
    """The current value of one (tenant, entity, relation, scope) key.

    The row points at the key's most recently asserted fact; the key has a current value when
    that fact has not expired. Decay expiry leaves the row in place rather than deleting it:
    deleting one head per expired fact touched random pages of three B-trees and cost more
    than the rest of a sweep together (docs/PERFORMANCE.md). The next write to the key
    overwrites the row, as it would have re-created a deleted one.
    """

    tenant = models.CharField(max_length=64)
    entity = models.CharField(max_length=MAX_URI_LENGTH)
    relation = models.CharField(max_length=MAX_RELATION_LENGTH)
    scope = models.CharField(max_length=16)
    # The garden's id as text, "" outside gardens (not NULL: a unique key must treat it as a value).
    # A fact written into a garden never replaces or disputes the value outside it.
    garden = models.CharField(max_length=36, blank=True, default="")
    fact = models.OneToOneField(Fact, on_delete=models.CASCADE, related_name="head")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "entity", "relation", "scope", "garden"], name="facthead_unique_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.entity} {self.relation} [{self.scope}]"


class Conflict(models.Model):
    """Two facts from different sources that disagree about the same key."""

    class Status(models.TextChoices):
        UNRESOLVED = "unresolved"
        RESOLVED = "resolved"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.CharField(max_length=64)
    fact_a = models.ForeignKey(Fact, on_delete=models.PROTECT, related_name="+")
    fact_b = models.ForeignKey(Fact, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNRESOLVED)
    detected_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=MAX_URI_LENGTH, null=True, blank=True)
    resolution_fact = models.ForeignKey(Fact, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    resolution_note = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "status", "detected_at", "id"], name="conflict_list"),
        ]

    def __str__(self) -> str:
        return f"conflict {self.id} ({self.status})"

    @property
    def public_id(self) -> str:
        """The reference's form of a conflict id; the bare uuid is accepted on input too."""
        return f"{CONFLICT_ID_PREFIX}{self.id}"
