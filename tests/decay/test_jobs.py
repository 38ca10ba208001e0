"""The job service (stigmem.jobs) and the decay tasks: leases, crashes, resuming, the scheduled sweep."""

from __future__ import annotations

from datetime import timedelta

import django_q.tasks
import pytest
from django.utils import timezone

from decay import service, tasks
from decay.models import DecayPolicy
from decay.sweep import SweepBusy, SweepResult
from stigmem import jobs
from stigmem.models import AuditEvent, Job
from tests.decay.api_helpers import expired_count, seed

SWEEP = "/v1/decay/sweep"


@pytest.fixture
def queued(monkeypatch) -> list[str]:
    """Job ids passed to django-q's ``async_task`` (no cluster runs in tests)."""
    calls: list[str] = []

    def record(func, *args, **kwargs):
        assert func == "decay.tasks.run_job"
        calls.append(args[0])

    monkeypatch.setattr(django_q.tasks, "async_task", record)
    return calls


def make_job(tenant: str = "default", **params) -> Job:
    return jobs.create_job(
        tenant,
        "decay",
        params={"ttl_seconds": 0, "min_confidence": None, **params},
        scope=None,
        dry_run=False,
        estimated_s=1,
        created_by="stigmem://test/agent/admin",
    )


def age(job: Job, seconds: float) -> None:
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=seconds))


def expire_lease(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(lease_until=timezone.now() - timedelta(seconds=1))


# --- claim and the lease ---------------------------------------------------------------------


def test_claim_is_exclusive_until_the_lease_expires(db):
    job = make_job()
    first = jobs.claim(job.id, "worker-a", 60)
    assert first is not None
    assert (first.status, first.lease_owner) == ("running", "worker-a")
    started = first.started_at
    assert started is not None
    assert jobs.claim(job.id, "worker-b", 60) is None  # worker-a is alive
    expire_lease(job)  # worker-a died
    second = jobs.claim(job.id, "worker-b", 60)
    assert second is not None and second.lease_owner == "worker-b"
    assert second.started_at == started  # the first start is kept
    # worker-a cannot renew or give back what it lost.
    assert jobs.renew(first, "worker-a", 60) is False
    assert jobs.release(first, "worker-a") is False
    assert jobs.renew(second, "worker-b", 60) is True


def test_finished_jobs_are_never_claimed(db):
    done, failed = make_job(), make_job()
    jobs.finish(done, SweepResult(scanned=3, decayed=2, dry_run=False))
    jobs.fail(failed, "boom")
    assert jobs.claim(done.id, "w", 60) is None
    assert jobs.claim(failed.id, "w", 60) is None
    assert jobs.resumable("decay") == []


def test_job_record_shape(db):
    job = make_job()
    record = jobs.job_record(Job.objects.get(pk=job.pk))
    assert record == {
        "job_id": str(job.id),
        "status": "pending",
        "scope": None,
        "estimated_s": 1,
        "created_at": Job.objects.get(pk=job.pk).created_at.isoformat(),
        "started_at": None,
        "completed_at": None,
        "progress": 0.0,
        "scanned": 0,
        "decayed": 0,
        "dry_run": False,
        "error": None,
    }


def test_get_job_is_tenant_scoped(db):
    job = make_job("acme")
    assert jobs.get_job("acme", str(job.id)).pk == job.pk
    for tenant, ref in [("default", str(job.id)), ("acme", "nope"), ("acme", "")]:
        with pytest.raises(Exception) as raised:
            jobs.get_job(tenant, ref)
        assert (raised.value.status, raised.value.detail) == (404, "job not found")


# --- run_job ---------------------------------------------------------------------------------


def test_run_job_sweeps_and_finishes(db):
    seed(count=3)
    job = make_job()
    assert tasks.run_job(str(job.id)) == "done"
    job.refresh_from_db()
    assert (job.status, job.scanned, job.decayed, job.progress) == ("done", 3, 3, 1.0)
    assert (job.lease_owner, job.lease_until, job.error) == ("", None, "")
    assert expired_count() == 3
    [entry] = AuditEvent.objects.filter(event_type="decay_sweep")
    assert entry.detail["job_id"] == str(job.id)
    assert entry.actor == "stigmem://test/agent/admin"


def test_run_job_leaves_a_job_run_by_a_live_worker_alone(db):
    seed(count=2)
    job = make_job()
    jobs.claim(job.id, "other-worker", 60)
    assert tasks.run_job(str(job.id)) == "running"
    assert expired_count() == 0


def test_run_job_of_an_unknown_job_does_nothing(db):
    assert tasks.run_job("00000000-0000-4000-8000-000000000000") == "missing"


def test_busy_tenant_leaves_the_job_pending_for_later(db, monkeypatch, queued):
    seed(count=2)
    job = make_job()

    def busy(*args, **kwargs):
        raise SweepBusy("default")

    monkeypatch.setattr(tasks, "run_sweep", busy)
    assert tasks.run_job(str(job.id)) == "pending"
    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.lease_until, job.error) == ("pending", "", None, "")
    monkeypatch.undo()
    # resume_jobs queues it again once it is past the grace period, and then it runs.
    monkeypatch.setattr(django_q.tasks, "async_task", lambda func, job_id, **kw: queued.append(job_id))
    age(job, tasks.PENDING_GRACE_S + 1)
    assert tasks.resume_jobs() == 1
    assert queued == [str(job.id)]
    assert tasks.run_job(queued[0]) == "done"
    assert expired_count() == 2


def test_a_lost_lease_stops_the_sweep_without_finishing(db, monkeypatch):
    seed(count=2)
    job = make_job()
    monkeypatch.setattr(jobs, "renew", lambda *args, **kwargs: False)
    assert tasks.run_job(str(job.id)) == "running"
    job.refresh_from_db()
    assert job.status == "running"  # the worker that took over finishes it


# --- surviving crashes -----------------------------------------------------------------------


def test_a_job_never_enqueued_is_picked_up_by_resume_jobs(admin_client, settings, monkeypatch, queued):
    """The web process died after committing the job but before its on-commit enqueue ran."""
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 1
    seed(count=3)
    # No django_capture_on_commit_callbacks: the commit hook never runs, as in a crash.
    job_id = admin_client.post(f"{SWEEP}?ttl_seconds=0").json()["job_id"]
    assert queued == []
    assert tasks.resume_jobs() == 0  # too young: its task may still be in the queue
    age(Job.objects.get(pk=job_id), tasks.PENDING_GRACE_S + 1)
    assert tasks.resume_jobs() == 1
    assert queued == [job_id]
    tasks.run_job(job_id)
    record = admin_client.get(f"/v1/decay/jobs/{job_id}").json()
    assert (record["status"], record["scanned"], record["decayed"], record["progress"]) == ("done", 3, 3, 1.0)


def test_a_job_whose_worker_crashed_is_resumed_and_finishes_once(admin_client, settings, queued):
    """A worker took the job, swept the first chunk and died; the lease runs out; the job resumes."""
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 1
    settings.STIGMEM_DECAY_CHUNK = 2
    seed(count=5)
    job_id = admin_client.post(f"{SWEEP}?ttl_seconds=0").json()["job_id"]

    class Crash(BaseException):
        """Like SIGKILL: nothing in run_job catches it."""

    def crash_after_first_chunk(_fraction: float) -> None:
        raise Crash

    from decay.sweep import run_sweep

    crashed = jobs.claim(job_id, "doomed-worker", tasks.LEASE_S)
    with pytest.raises(Crash):
        run_sweep(service.request_of(crashed), actor="x", job=crashed, progress=crash_after_first_chunk)
    midway = admin_client.get(f"/v1/decay/jobs/{job_id}").json()
    assert midway["status"] == "running"
    assert 0.0 < midway["progress"] < 1.0
    assert midway["decayed"] == 2
    assert expired_count() == 2

    assert tasks.run_job(job_id) == "running"  # the lease is still held: nobody takes over yet
    assert tasks.resume_jobs() == 0
    expire_lease(crashed)
    # The crashed sweep's tenant lock is a lease too; the sweep engine lets it expire the same way.
    from decay.models import SweepLock

    SweepLock.objects.update(until=timezone.now() - timedelta(seconds=1))
    assert tasks.resume_jobs() == 1
    assert queued == [job_id]
    assert tasks.run_job(job_id) == "done"
    done = admin_client.get(f"/v1/decay/jobs/{job_id}").json()
    assert (done["status"], done["scanned"], done["decayed"], done["progress"]) == ("done", 5, 5, 1.0)
    assert expired_count() == 5
    assert done["started_at"] == midway["started_at"]


def test_resume_jobs_ignores_finished_and_other_kinds(db, queued):
    finished = make_job()
    jobs.finish(finished, SweepResult(1, 1, False))
    other = jobs.create_job("default", "export", params={}, scope=None, dry_run=False, estimated_s=1, created_by="")
    age(finished, 3600)
    age(other, 3600)
    assert tasks.resume_jobs() == 0
    assert queued == []


def test_enqueue_survives_a_broker_outage(db, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(django_q.tasks, "async_task", down)
    job = make_job()
    tasks.enqueue(job.id)  # logged, not raised: resume_jobs retries
    assert Job.objects.get(pk=job.pk).status == "pending"


# --- the scheduled sweep ---------------------------------------------------------------------


def test_scheduled_sweep_applies_each_tenants_enabled_policies(db):
    seed("default", count=2)
    seed("acme", count=3)
    seed("idle", count=1)
    DecayPolicy.objects.create(tenant="default", name="all", ttl_seconds=0)
    DecayPolicy.objects.create(tenant="acme", name="all", ttl_seconds=0)
    DecayPolicy.objects.create(tenant="idle", name="off", ttl_seconds=0, enabled=False)
    assert tasks.scheduled_sweep() == {"acme": "scanned=3 decayed=3", "default": "scanned=2 decayed=2"}
    assert (expired_count("default"), expired_count("acme"), expired_count("idle")) == (2, 3, 0)
    assert AuditEvent.objects.filter(event_type="decay_sweep", actor=tasks.SCHEDULED_ACTOR).count() == 2


def test_scheduled_sweep_skips_a_busy_tenant_and_goes_on(db, monkeypatch):
    seed("default", count=2)
    seed("acme", count=2)
    DecayPolicy.objects.create(tenant="default", name="all", ttl_seconds=0)
    DecayPolicy.objects.create(tenant="acme", name="all", ttl_seconds=0)
    real = tasks.run_sweep

    def busy_acme(request, **kwargs):
        if request.tenant == "acme":
            raise SweepBusy("acme")
        return real(request, **kwargs)

    monkeypatch.setattr(tasks, "run_sweep", busy_acme)
    assert tasks.scheduled_sweep() == {"acme": "busy", "default": "scanned=2 decayed=2"}
    assert (expired_count("default"), expired_count("acme")) == (2, 0)


def test_scheduled_sweep_busy_with_the_real_lock(db):
    """A sweep holding the tenant's lock (another process) makes the scheduled one skip that tenant."""
    from decay.sweep import _acquire, _release

    seed("default", count=2)
    DecayPolicy.objects.create(tenant="default", name="all", ttl_seconds=0)
    _acquire("default", "another-process")
    try:
        assert tasks.scheduled_sweep() == {"default": "busy"}
        assert expired_count() == 0
    finally:
        _release("default", "another-process")
    assert tasks.scheduled_sweep() == {"default": "scanned=2 decayed=2"}
