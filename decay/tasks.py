"""django-q2 tasks of decay (schedules registered in ``DecayConfig.ready``).

- ``run_job``: one queued sweep (``POST /v1/decay/sweep`` above the async threshold);
- ``resume_jobs`` (every minute): jobs nobody runs — never enqueued because the web process died
  before its commit hook ran, or whose worker died mid-sweep (lease expired) — are queued again;
  the sweep resumes after the job's last committed chunk;
- ``scheduled_sweep``: every tenant's enabled policies, applied by a sweep per tenant.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from decay import service
from decay.models import DecayPolicy
from decay.sweep import SweepBusy, SweepRequest, run_sweep
from stigmem import jobs
from stigmem.models import Job

logger = logging.getLogger(__name__)

RUN_TASK = "decay.tasks.run_job"
# A worker renews its lease after every chunk; a chunk takes well under a second, so a lease
# this long only runs out when the worker is gone.
LEASE_S = 120.0
# A pending job younger than this is probably still in the broker's queue: leave it to that task.
PENDING_GRACE_S = 60.0
SCHEDULED_ACTOR = "stigmem:decay:scheduler"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def enqueue(job_id: uuid.UUID | str) -> None:
    """Queue ``run_job`` on the cluster; a broker failure leaves the job pending for ``resume_jobs``."""
    from django_q.tasks import async_task  # needs the app registry

    try:
        async_task(RUN_TASK, str(job_id), group="decay", sync=settings.Q_CLUSTER.get("sync", False))
    except Exception:
        logger.exception("could not enqueue decay job %s; resume_jobs will run it", job_id)


def run_job(job_id: str) -> str:
    """Run one sweep job under its lease; returns the job's status afterwards.

    A job that is done, failed or being run by a live worker is left alone. If another sweep of
    the tenant holds the tenant's lock, the job goes back to pending and a later ``resume_jobs``
    retries it; it is not failed.
    """
    owner = _owner()
    job = jobs.claim(job_id, owner, LEASE_S)
    if job is None:
        current = Job.objects.filter(id=job_id).values_list("status", flat=True).first()
        return current or "missing"

    def progress(_fraction: float) -> None:
        if not jobs.renew(job, owner, LEASE_S):
            # Our lease expired and another worker took the job over; it resumes from the last
            # committed chunk, so stopping here loses nothing.
            raise LeaseLost(job.id)

    try:
        result = run_sweep(service.request_of(job), actor=job.created_by or SCHEDULED_ACTOR, job=job, progress=progress)
    except SweepBusy:
        jobs.release(job, owner)
        logger.info("decay job %s waits: another sweep of tenant %s is running", job.id, job.tenant)
        return Job.Status.PENDING
    except LeaseLost:
        logger.warning("decay job %s: lease lost to another worker, stopping", job.id)
        return Job.Status.RUNNING
    except Exception as exc:
        logger.exception("decay job %s failed", job.id)
        jobs.fail(job, f"{type(exc).__name__}: {exc}")
        return Job.Status.FAILED
    jobs.finish(job, result)
    return Job.Status.DONE


class LeaseLost(Exception):
    """Raised from the progress callback to stop a sweep whose job another worker now runs."""


def resume_jobs() -> int:
    """Queue again every decay job nobody is running; returns how many were queued."""
    now = timezone.now()
    queued = 0
    for job in jobs.resumable(service.JOB_KIND, now):
        if job.status == Job.Status.PENDING and job.created_at > now - timedelta(seconds=PENDING_GRACE_S):
            continue
        enqueue(job.id)
        queued += 1
    return queued


def scheduled_sweep() -> dict[str, str]:
    """Apply the enabled policies of every tenant that has any; returns each tenant's outcome."""
    tenants = sorted(set(DecayPolicy.objects.filter(enabled=True).values_list("tenant", flat=True)))
    outcomes: dict[str, str] = {}
    for tenant in tenants:
        try:
            result = run_sweep(SweepRequest(tenant=tenant), actor=SCHEDULED_ACTOR)
        except SweepBusy:
            # A sweep of this tenant is already running; the next schedule catches up.
            outcomes[tenant] = "busy"
            continue
        except Exception:
            # One tenant's failure must not stop the others' sweeps.
            logger.exception("scheduled decay sweep of tenant %s failed", tenant)
            outcomes[tenant] = "failed"
            continue
        outcomes[tenant] = f"scanned={result.scanned} decayed={result.decayed}"
    return outcomes
