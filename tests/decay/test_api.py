"""POST /v1/decay/sweep and GET /v1/decay/jobs/{job_id} (WIRE.md §7) through the HTTP API."""

from __future__ import annotations

import uuid

import django_q.tasks
import pytest

from decay import service, tasks
from decay.sweep import _acquire, _release
from stigmem.models import AuditEvent, Fact, Job
from tests.decay.api_helpers import expired_count, seed, snapshot

SWEEP = "/v1/decay/sweep"


@pytest.fixture
def queued(monkeypatch) -> list[tuple]:
    """Calls to django-q's ``async_task`` (the worker is not running in tests)."""
    calls: list[tuple] = []
    monkeypatch.setattr(django_q.tasks, "async_task", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


# --- who may sweep ---------------------------------------------------------------------------


def test_anonymous_gets_401_and_nothing_changes(db, anon):
    seed()
    before = snapshot()
    response = anon.post(f"{SWEEP}?ttl_seconds=0")
    assert response.status_code == 401
    assert snapshot() == before


@pytest.mark.parametrize("permissions", [["read"], ["read", "write"], ["read", "write", "federate", "audit.read"]])
def test_non_admin_gets_403_and_nothing_changes(make_client, permissions):
    seed()
    before = snapshot()
    response = make_client(permissions).post(f"{SWEEP}?ttl_seconds=0")
    assert response.status_code == 403
    assert response.json() == {"detail": "admin permission required"}
    assert snapshot() == before


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "loc", "type_"),
    [
        ("ttl_seconds=-1", "ttl_seconds", "range_error"),
        ("ttl_seconds=abc", "ttl_seconds", "int_parsing"),
        ("ttl_seconds=1.5", "ttl_seconds", "int_parsing"),
        (f"ttl_seconds={service.MAX_SECONDS + 1}", "ttl_seconds", "range_error"),
        ("ttl_seconds=99999999999999999999999999", "ttl_seconds", "range_error"),
        ("min_confidence=1.01", "min_confidence", "confidence_range"),
        ("min_confidence=-0.1", "min_confidence", "confidence_range"),
        ("min_confidence=nan", "min_confidence", "confidence_range"),
        ("min_confidence=inf", "min_confidence", "confidence_range"),
        ("min_confidence=high", "min_confidence", "float_parsing"),
        ("dry_run=maybe", "dry_run", "bool_parsing"),
    ],
)
def test_out_of_range_parameters_are_422_and_change_nothing(admin_client, query, loc, type_):
    seed()
    before = snapshot()
    response = admin_client.post(f"{SWEEP}?{query}")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", loc]
    assert error["type"] == type_
    assert isinstance(error["msg"], str) and error["msg"]
    assert snapshot() == before


def test_every_bad_parameter_is_reported_at_once(admin_client):
    response = admin_client.post(f"{SWEEP}?ttl_seconds=-5&min_confidence=7&dry_run=perhaps")
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [
        ["query", "ttl_seconds"],
        ["query", "min_confidence"],
        ["query", "dry_run"],
    ]


@pytest.mark.parametrize("scope", ["galaxy", "Company", "*", "local "])
def test_unknown_scope_is_400_and_changes_nothing(admin_client, scope):
    seed()
    before = snapshot()
    response = admin_client.post(f"{SWEEP}?ttl_seconds=0&scope={scope}")
    assert response.status_code == 400
    assert response.json() == {
        "detail": {"code": "invalid_scope", "message": "scope must be one of local, team, company, public"}
    }
    assert snapshot() == before


# --- the synchronous sweep -------------------------------------------------------------------


def test_dry_run_counts_and_changes_nothing(admin_client):
    seed(count=3)
    before = snapshot()[:2]
    response = admin_client.post(f"{SWEEP}?ttl_seconds=0&dry_run=true")
    assert response.status_code == 200
    assert response.json() == {"scanned": 3, "decayed": 0, "dry_run": True}
    assert snapshot()[:2] == before


def test_ttl_sweep_expires_the_tenants_facts(admin_client):
    facts = seed(count=3)
    response = admin_client.post(f"{SWEEP}?ttl_seconds=0&dry_run=false", {"ignored": "body"}, format="json")
    assert response.status_code == 200
    assert response.json() == {"scanned": 3, "decayed": 3, "dry_run": False}
    assert expired_count() == 3
    # Expired facts leave the default reads, and a second sweep finds nothing more.
    page = admin_client.get("/v1/facts", {"entity": facts[0].entity}).json()
    assert page["facts"] == []
    assert admin_client.post(f"{SWEEP}?ttl_seconds=0").json() == {"scanned": 0, "decayed": 0, "dry_run": False}


@pytest.mark.parametrize("dry_run", ["1", "0", "true", "false", "TRUE"])
def test_dry_run_accepts_the_usual_booleans(admin_client, dry_run):
    seed(count=2)
    body = admin_client.post(f"{SWEEP}?ttl_seconds=0&dry_run={dry_run}").json()
    expected_dry = dry_run.lower() in ("1", "true")
    assert body == {"scanned": 2, "decayed": 0 if expected_dry else 2, "dry_run": expected_dry}


def test_sweep_is_tenant_scoped(make_client):
    seed("default", count=2)
    seed("acme", count=4)
    admin = make_client(["read", "admin"], tenant="acme")
    assert admin.post(f"{SWEEP}?ttl_seconds=0").json() == {"scanned": 4, "decayed": 4, "dry_run": False}
    assert expired_count("acme") == 4
    assert expired_count("default") == 0


def test_scope_limits_the_sweep(admin_client):
    seed(count=2, scope="company")
    seed(count=3, scope="team", prefix="t")
    assert admin_client.post(f"{SWEEP}?ttl_seconds=0&scope=team").json() == {
        "scanned": 3,
        "decayed": 3,
        "dry_run": False,
    }
    assert set(Fact.objects.filter(expired_at__isnull=False).values_list("scope", flat=True)) == {"team"}


def test_confidence_floor(admin_client):
    seed(count=2, confidence=0.3)
    seed(count=1, confidence=0.9, prefix="high")
    assert admin_client.post(f"{SWEEP}?min_confidence=0.5").json() == {"scanned": 2, "decayed": 2, "dry_run": False}
    assert set(Fact.objects.filter(expired_at__isnull=False).values_list("confidence", flat=True)) == {0.3}


def test_busy_tenant_is_409(admin_client):
    """Another process holds the tenant's sweep lock."""
    seed()
    _acquire("default", "another-process")
    before = snapshot()
    response = admin_client.post(f"{SWEEP}?ttl_seconds=0")
    assert response.status_code == 409
    assert response.json() == {"detail": "a decay sweep of this tenant is already running"}
    assert snapshot() == before
    # A dry run writes nothing and takes no lock: it still answers.
    assert admin_client.post(f"{SWEEP}?ttl_seconds=0&dry_run=true").status_code == 200
    _release("default", "another-process")
    assert admin_client.post(f"{SWEEP}?ttl_seconds=0").status_code == 200


# --- the asynchronous path -------------------------------------------------------------------


def test_large_sweep_is_queued_then_runs_on_a_worker(
    admin_client, settings, queued, django_capture_on_commit_callbacks
):
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 2
    seed(count=3)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"{SWEEP}?ttl_seconds=0&scope=company")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"job_id", "status", "estimated_s"}
    assert body["status"] == "pending"
    assert body["estimated_s"] == 1
    job_id = body["job_id"]
    # Queued on the cluster after the commit; nothing swept in the request.
    assert [args for args, _ in queued] == [("decay.tasks.run_job", job_id)]
    assert queued[0][1]["group"] == "decay"
    assert expired_count() == 0

    pending = admin_client.get(f"/v1/decay/jobs/{job_id}").json()
    assert pending["status"] == "pending"
    assert pending["started_at"] is None and pending["completed_at"] is None
    assert pending["progress"] == 0.0

    assert tasks.run_job(job_id) == "done"  # what the worker runs

    done = admin_client.get(f"/v1/decay/jobs/{job_id}").json()
    assert done["job_id"] == job_id
    assert done["status"] == "done"
    assert done["progress"] == 1.0
    assert (done["scanned"], done["decayed"], done["dry_run"]) == (3, 3, False)
    assert done["scope"] == "company"
    assert done["estimated_s"] == 1
    assert done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    assert expired_count() == 3
    assert AuditEvent.objects.filter(event_type="decay_job_created", target=job_id).count() == 1
    # Running the task again (a duplicate delivery) changes nothing.
    assert tasks.run_job(job_id) == "done"
    assert admin_client.get(f"/v1/decay/jobs/{job_id}").json() == done


def test_dry_run_is_always_synchronous(admin_client, settings, queued):
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 0
    seed(count=3)
    response = admin_client.post(f"{SWEEP}?ttl_seconds=0&dry_run=true")
    assert response.status_code == 200
    assert response.json() == {"scanned": 3, "decayed": 0, "dry_run": True}
    assert Job.objects.count() == 0
    assert queued == []


def test_at_the_threshold_the_sweep_is_synchronous(admin_client, settings, queued):
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 3
    seed(count=3)
    assert admin_client.post(f"{SWEEP}?ttl_seconds=0").status_code == 200
    assert Job.objects.count() == 0


def test_second_large_sweep_while_a_job_is_unfinished_is_409(admin_client, settings, queued):
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 1
    seed(count=3)
    first = admin_client.post(f"{SWEEP}?ttl_seconds=0")
    assert first.status_code == 202
    before = snapshot()
    second = admin_client.post(f"{SWEEP}?min_confidence=0.5")
    assert second.status_code == 409
    assert second.json() == {"detail": "a decay sweep of this tenant is already running"}
    assert snapshot() == before
    # Once the first job is done, a new one may be queued.
    tasks.run_job(first.json()["job_id"])
    seed(count=3, prefix="again")
    assert admin_client.post(f"{SWEEP}?ttl_seconds=0").status_code == 202


def test_another_tenants_unfinished_job_does_not_block(make_client, settings, queued):
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 1
    seed("default", count=2)
    seed("acme", count=2)
    assert make_client(["admin"], tenant="acme").post(f"{SWEEP}?ttl_seconds=0").status_code == 202
    assert make_client(["admin"]).post(f"{SWEEP}?ttl_seconds=0").status_code == 202


# --- GET /v1/decay/jobs/{job_id} -------------------------------------------------------------


def test_job_is_readable_with_read_permission_in_its_tenant_only(make_client, settings, queued):
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 1
    seed(count=2)
    job_id = make_client(["admin"]).post(f"{SWEEP}?ttl_seconds=0").json()["job_id"]
    assert make_client(["read"]).get(f"/v1/decay/jobs/{job_id}").status_code == 200
    other = make_client(["read", "admin"], tenant="acme").get(f"/v1/decay/jobs/{job_id}")
    assert other.status_code == 404
    assert other.json() == {"detail": "job not found"}


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "1", "%00", "x" * 300])
def test_unknown_or_malformed_job_is_404(admin_client, job_id):
    response = admin_client.get(f"/v1/decay/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json() == {"detail": "job not found"}


def test_job_needs_credentials(db, anon):
    assert anon.get(f"/v1/decay/jobs/{uuid.uuid4()}").status_code == 401


def test_failed_job_shows_its_error(admin_client, settings, queued, monkeypatch):
    settings.STIGMEM_ASYNC_JOB_THRESHOLD = 1
    seed(count=2)
    job_id = admin_client.post(f"{SWEEP}?ttl_seconds=0").json()["job_id"]

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tasks, "run_sweep", broken)
    assert tasks.run_job(job_id) == "failed"
    record = admin_client.get(f"/v1/decay/jobs/{job_id}").json()
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: disk on fire"
    assert record["completed_at"] is not None
    assert expired_count() == 0
