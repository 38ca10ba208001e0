"""Writing the audit log (WIRE.md §4.4).

``record(...)`` must be called inside the transaction of the action it records, so the entry
commits or rolls back with the action.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from stigmem.models import AuditEvent


def record(
    tenant: str, event_type: str, *, actor: str = "", target: str = "", detail: dict[str, Any] | None = None
) -> AuditEvent:
    return AuditEvent.objects.create(
        tenant=tenant,
        event_type=event_type,
        actor=actor[:512],
        target=target[:512],
        detail=detail or {},
        created_at=timezone.now(),
    )
