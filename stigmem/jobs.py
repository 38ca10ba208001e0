"""The life of a background job (``stigmem.models.Job``): created by a request, claimed by a worker.

A job moves pending → running → done | failed. A worker runs it only while it holds the job's
lease: ``claim`` takes the lease with one conditional UPDATE (a pending job, or a running one
whose lease ran out because its worker died), so two workers never run one job at once and a
job whose worker crashed is taken over by the next one that tries (``decay.tasks.resume_jobs``).
The worker renews the lease as it makes progress.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from stigmem.errors import not_found
from stigmem.models import Job

# Stored job errors are for people reading the job; a traceback's first lines are enough.
MAX_ERROR_LENGTH = 2000


def create_job(
    tenant: str,
    kind: str,
    *,
    params: dict[str, Any],
    scope: str | None,
    dry_run: bool,
    estimated_s: int,
    created_by: str,
) -> Job:
    return Job.objects.create(
        tenant=tenant,
        kind=kind,
        params=params,
        scope=scope,
        dry_run=dry_run,
        estimated_s=estimated_s,
        created_by=created_by[:512],
    )


def _claimable(now) -> Q:
    return Q(status=Job.Status.PENDING) | Q(status=Job.Status.RUNNING, lease_until__lt=now)


def claim(job_id: uuid.UUID | str, owner: str, lease_s: float) -> Job | None:
    """Take the job's lease for ``lease_s`` seconds; ``None`` when it is done, failed or held by a live worker."""
    now = timezone.now()
    taken = Job.objects.filter(_claimable(now), id=job_id).update(
        status=Job.Status.RUNNING,
        lease_owner=owner[:64],
        lease_until=now + timedelta(seconds=lease_s),
        started_at=Coalesce("started_at", now),  # the first start, not the latest takeover
    )
    if not taken:
        return None
    return Job.objects.get(id=job_id)


def renew(job: Job, owner: str, lease_s: float) -> bool:
    """Extend a held lease; False when the lease was lost (taken over after it expired)."""
    until = timezone.now() + timedelta(seconds=lease_s)
    renewed = Job.objects.filter(id=job.id, status=Job.Status.RUNNING, lease_owner=owner[:64]).update(lease_until=until)
    if renewed:
        job.lease_until = until
    return bool(renewed)


def release(job: Job, owner: str) -> bool:
    """Give a running job back (pending, no lease) so a later attempt runs it."""
    return bool(
        Job.objects.filter(id=job.id, status=Job.Status.RUNNING, lease_owner=owner[:64]).update(
            status=Job.Status.PENDING, lease_owner="", lease_until=None
        )
    )


def finish(job: Job, result: Any) -> Job:
    """Mark the job done with the counts of ``result`` (anything with ``scanned`` and ``decayed``)."""
    now = timezone.now()
    changes = {
        "status": Job.Status.DONE,
        "progress": 1.0,
        "scanned": result.scanned,
        "decayed": result.decayed,
        "completed_at": now,
        "lease_owner": "",
        "lease_until": None,
        "error": "",
    }
    Job.objects.filter(id=job.id).update(**changes)
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def fail(job: Job, error: str) -> Job:
    now = timezone.now()
    changes = {
        "status": Job.Status.FAILED,
        "error": (error or "failed")[:MAX_ERROR_LENGTH],
        "completed_at": now,
        "lease_owner": "",
        "lease_until": None,
    }
    Job.objects.filter(id=job.id).update(**changes)
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def resumable(kind: str, now=None) -> list[Job]:
    """Jobs of a kind nobody is running: pending ones, and running ones whose worker's lease ran out."""
    return list(Job.objects.filter(_claimable(now or timezone.now()), kind=kind).order_by("created_at"))


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def job_record(job: Job) -> dict[str, Any]:
    """The wire shape of ``GET /v1/decay/jobs/{job_id}`` (WIRE.md §7)."""
    return {
        "job_id": str(job.id),
        "status": job.status,
        "scope": job.scope or None,
        "estimated_s": job.estimated_s,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "progress": float(job.progress),
        "scanned": job.scanned,
        "decayed": job.decayed,
        "dry_run": job.dry_run,
        "error": job.error or None,
    }


def get_job(tenant: str, job_id: str) -> Job:
    """The tenant's job; 404 ``job not found`` for a malformed id, an unknown one or another tenant's."""
    try:
        parsed = uuid.UUID(str(job_id))
    except ValueError:
        raise not_found("job") from None
    job = Job.objects.filter(id=parsed, tenant=tenant).first()
    if job is None:
        raise not_found("job")
    return job
