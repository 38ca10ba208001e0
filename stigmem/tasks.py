"""Background tasks of the core, run by the django-q2 cluster (schedules: ``stigmem.schedules``)."""

from __future__ import annotations

from django.utils import timezone

from stigmem import audit, logtail
from stigmem.models import NodeIdentity
from stigmem.node import ensure_identity


def heartbeat() -> None:
    """Record that a worker is alive; /healthz reports the age of this stamp."""
    ensure_identity()
    NodeIdentity.objects.filter(pk=1).update(worker_heartbeat_at=timezone.now())


def sweep_logs() -> int:
    """Safety net for the on-commit kicks: run every log consumer until caught up."""
    return logtail.run_consumers(budget_s=50.0)


def prune_audit() -> int:
    """Delete audit rows past STIGMEM_AUDIT_RETENTION_DAYS."""
    return audit.prune_audit()
