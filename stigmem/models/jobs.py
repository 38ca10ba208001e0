"""Background jobs the API starts and callers poll (``GET /v1/decay/jobs/{id}``)."""

from __future__ import annotations

import uuid

from django.db import models


class Job(models.Model):
    """One long-running piece of work of a tenant, run by a django-q2 worker, with its progress.

    ``position`` is how far the work has durably got (for a sweep: the last fact ``seq`` whose
    chunk committed), so a job whose worker died is resumed where it stopped, not redone.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.CharField(max_length=64)
    kind = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    params = models.JSONField(default=dict, blank=True)
    scope = models.CharField(max_length=16, null=True, blank=True)
    dry_run = models.BooleanField(default=False)
    estimated_s = models.IntegerField(default=0)
    progress = models.FloatField(default=0.0)
    scanned = models.BigIntegerField(default=0)
    decayed = models.BigIntegerField(default=0)
    position = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created_by = models.CharField(max_length=512, blank=True, default="")
    # A worker holds the lease while it runs the job; an expired lease may be taken over.
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "kind", "created_at"], name="job_tenant_kind")]

    def __str__(self) -> str:
        return f"{self.kind} job {self.id} ({self.status})"
