"""The audit log: one row per security-relevant action, written in the action's transaction."""

from __future__ import annotations

from django.db import models

from stigmem.limits import MAX_URI_LENGTH


class AuditEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    tenant = models.CharField(max_length=64)
    event_type = models.CharField(max_length=64)
    actor = models.CharField(max_length=MAX_URI_LENGTH, blank=True, default="")
    target = models.CharField(max_length=MAX_URI_LENGTH, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "id"], name="audit_tenant_id"),
            models.Index(fields=["tenant", "event_type", "id"], name="audit_tenant_type_id"),
            models.Index(fields=["created_at"], name="audit_created_at"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} by {self.actor or '-'}"
