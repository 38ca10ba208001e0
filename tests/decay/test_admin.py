"""Decay in the operator console: job pages, policy editing with the API's rules, and the dry-run preview."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from decay.models import DecayPolicy
from stigmem.jobs import claim, create_job, fail, finish
from stigmem.models import AuditEvent, Event, Fact, FactHead, Job
from tests.decay.api_helpers import policy_rows

POLICIES = "admin:decay_decaypolicy_changelist"
POLICY_ADD = "admin:decay_decaypolicy_add"
JOBS = "admin:stigmem_job_changelist"


def policy_url(policy: DecayPolicy, page: str = "change") -> str:
    return reverse(f"admin:decay_decaypolicy_{page}", args=[policy.pk])


def job_url(job: Job, page: str = "change") -> str:
    return reverse(f"admin:stigmem_job_{page}", args=[job.pk])


def assert_fact(client, relation: str, value: str, **extra) -> dict:
    body = {
        "entity": "stigmem://test/user/erin",
        "relation": relation,
        "value": {"type": "string", "v": value},
        "source": "stigmem://test/agent/one",
        **extra,
    }
    response = client.post("/v1/facts", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def form_data(**overrides) -> dict:
    data = {
        "tenant": "default",
        "name": "chat ages",
        "relation_prefix": "chat:",
        "scope": "",
        "ttl_seconds": "",
        "half_life_seconds": "3600",
        "min_confidence": "",
        "enabled": "on",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def form_errors(response) -> dict:
    assert response.status_code == 200, response.status_code  # the form again, not a redirect
    form = response.context["adminform"].form
    return form.errors


def decay_audit() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type__startswith="decay_policy_").order_by("id"))


@pytest.fixture
def jobs(db) -> dict[str, Job]:
    pending = create_job(
        "default", "decay", params={"ttl_seconds": 60}, scope=None, dry_run=False, estimated_s=3, created_by="api"
    )
    running = create_job(
        "default", "decay", params={}, scope="company", dry_run=False, estimated_s=30, created_by="api"
    )
    running = claim(running.id, "worker-1", 60)
    Job.objects.filter(id=running.id).update(progress=0.42, scanned=1200, position=99)
    done = create_job("acme", "decay", params={}, scope=None, dry_run=True, estimated_s=1, created_by="api")
    claim(done.id, "worker-1", 60)
    done = finish(Job.objects.get(id=done.id), SimpleNamespace(scanned=7, decayed=5))
    failed = create_job("default", "decay", params={}, scope=None, dry_run=False, estimated_s=1, created_by="api")
    claim(failed.id, "worker-2", 60)
    failed = fail(Job.objects.get(id=failed.id), "OperationalError: database is locked " + "x" * 300)
    return {"pending": pending, "running": Job.objects.get(id=running.id), "done": done, "failed": failed}


# --- jobs ------------------------------------------------------------------------------------------


def test_job_list_shows_status_progress_counts_and_errors(browser, jobs):
    response = browser.get(reverse(JOBS))
    assert response.status_code == 200
    assert {job.pk for job in response.context["cl"].result_list} == {job.pk for job in jobs.values()}
    html = response.content.decode()
    assert '<progress value="42" max="100"' in html and "42%" in html
    assert '<progress value="100" max="100"' in html  # the finished one
    assert "OperationalError: database is locked" in html
    assert "x" * 300 not in html  # truncated in the list
    assert "so far" in html  # the running job's duration


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status__exact": "failed"}, {"failed"}),
        ({"status__exact": "running"}, {"running"}),
        ({"tenant": "acme"}, {"done"}),
        ({"kind": "decay"}, {"pending", "running", "done", "failed"}),
        ({"dry_run__exact": "1"}, {"done"}),
    ],
)
def test_job_list_filters(browser, jobs, params, expected):
    response = browser.get(reverse(JOBS), params)
    assert response.status_code == 200, params
    assert {job.pk for job in response.context["cl"].result_list} == {jobs[name].pk for name in expected}


def test_job_detail_pages_load_and_show_the_api_record(browser, jobs):
    for name, job in jobs.items():
        response = browser.get(job_url(job))
        assert response.status_code == 200, name
        html = response.content.decode()
        assert f"&quot;job_id&quot;: &quot;{job.id}&quot;" in html, name
    failed = browser.get(job_url(jobs["failed"])).content.decode()
    assert "x" * 300 in failed  # the whole error on the detail page


def test_jobs_are_read_only(browser, jobs):
    job = jobs["running"]
    before = list(Job.objects.order_by("id").values())
    assert browser.get(reverse("admin:stigmem_job_add")).status_code == 403
    assert browser.post(reverse("admin:stigmem_job_add"), {"tenant": "default", "kind": "decay"}).status_code == 403
    assert browser.post(job_url(job), {"status": "done", "progress": "1"}).status_code == 403
    assert browser.get(job_url(job, "delete")).status_code == 403
    assert browser.post(job_url(job, "delete"), {"post": "yes"}).status_code == 403
    bulk = browser.post(reverse(JOBS), {"action": "delete_selected", "_selected_action": [str(job.pk)], "post": "yes"})
    assert bulk.status_code in (200, 302)
    assert list(Job.objects.order_by("id").values()) == before
    assert "delete_selected" not in browser.get(reverse(JOBS)).content.decode()


# --- policy pages ----------------------------------------------------------------------------------


def test_policy_pages_load(browser, db):
    policy = DecayPolicy.objects.create(
        tenant="default", name="chat ages", relation_prefix="chat:", ttl_seconds=90061, half_life_seconds=604800
    )
    everything = DecayPolicy.objects.create(tenant="acme", name="floor", scope="team", min_confidence=0.2)
    listing = browser.get(reverse(POLICIES))
    assert listing.status_code == 200
    assert {p.pk for p in listing.context["cl"].result_list} == {policy.pk, everything.pk}
    html = listing.content.decode()
    assert "1 d 1 h 1 min 1 s" in html and "7 d" in html  # durations read as durations
    assert 'value="preview_expiry"' in html
    add = browser.get(reverse(POLICY_ADD))
    assert add.status_code == 200
    assert add.context["adminform"].form.initial["tenant"] == "default"
    change = browser.get(policy_url(policy))
    assert change.status_code == 200
    assert policy_url(policy, "preview") in change.content.decode()
    assert browser.get(policy_url(policy, "delete")).status_code == 200
    filtered = browser.get(reverse(POLICIES), {"tenant": "acme"})
    assert [p.pk for p in filtered.context["cl"].result_list] == [everything.pk]
    relation_any = browser.get(reverse(POLICIES), {"tenant": "acme"}).content.decode()
    assert ">any<" in relation_any  # relation prefix "" reads "any"


# --- policy validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ttl_seconds": "", "half_life_seconds": "", "min_confidence": ""}, "__all__"),
        ({"ttl_seconds": "-1"}, "ttl_seconds"),
        ({"ttl_seconds": "ten"}, "ttl_seconds"),
        ({"ttl_seconds": str(10**15)}, "ttl_seconds"),
        ({"half_life_seconds": "0"}, "half_life_seconds"),
        ({"half_life_seconds": "-3600"}, "half_life_seconds"),
        ({"min_confidence": "1.5"}, "min_confidence"),
        ({"min_confidence": "-0.1"}, "min_confidence"),
        ({"min_confidence": "nan"}, "min_confidence"),
        ({"scope": "galaxy"}, "scope"),
        ({"name": ""}, "name"),
        ({"tenant": ""}, "tenant"),
        ({"relation_prefix": "x" * 1000}, "relation_prefix"),
    ],
)
def test_bad_policies_are_refused_with_a_form_error(browser, db, overrides, field):
    response = browser.post(reverse(POLICY_ADD), form_data(**overrides))
    errors = form_errors(response)
    assert list(errors) == [field], errors
    assert DecayPolicy.objects.count() == 0
    assert decay_audit() == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ttl_seconds": "", "half_life_seconds": "", "min_confidence": ""}, "__all__"),
        ({"half_life_seconds": "0"}, "half_life_seconds"),
        ({"ttl_seconds": "-5"}, "ttl_seconds"),
        ({"min_confidence": "2"}, "min_confidence"),
    ],
)
def test_bad_edits_are_refused_and_change_nothing(browser, db, overrides, field):
    policy = DecayPolicy.objects.create(
        tenant="default", name="chat ages", relation_prefix="chat:", half_life_seconds=60
    )
    before = policy_rows()
    errors = form_errors(browser.post(policy_url(policy), form_data(**overrides)))
    assert list(errors) == [field], errors
    assert policy_rows() == before
    assert decay_audit() == []


def test_a_policy_with_only_a_floor_or_only_a_ttl_is_fine(browser, db):
    for name, overrides in (
        ("floor", {"half_life_seconds": "", "min_confidence": "0", "relation_prefix": "a:"}),
        ("ttl zero", {"half_life_seconds": "", "ttl_seconds": "0", "relation_prefix": "b:"}),
        ("floor one", {"half_life_seconds": "", "min_confidence": "1", "relation_prefix": "c:"}),
    ):
        response = browser.post(reverse(POLICY_ADD), form_data(name=name, **overrides))
        assert response.status_code == 302, form_errors(response)
    assert [(p[1], p[4], p[6]) for p in policy_rows()] == [
        ("floor", None, 0.0),
        ("ttl zero", 0, None),
        ("floor one", None, 1.0),
    ]


def test_a_second_policy_with_the_same_match_is_a_form_error(browser, db):
    first = DecayPolicy.objects.create(tenant="default", name="first", relation_prefix="chat:", ttl_seconds=60)
    before = policy_rows()
    response = browser.post(reverse(POLICY_ADD), form_data(name="second"))
    errors = form_errors(response)
    assert list(errors) == ["__all__"]
    assert errors["__all__"] == ["Decay policy with this Tenant, Relation prefix and Scope already exists."]
    assert policy_rows() == before
    assert decay_audit() == []
    # The same match in another tenant, or another scope in this one, is a different policy.
    assert browser.post(reverse(POLICY_ADD), form_data(name="acme", tenant="acme")).status_code == 302
    assert browser.post(reverse(POLICY_ADD), form_data(name="team only", scope="team")).status_code == 302
    assert DecayPolicy.objects.count() == 3

    # Editing another policy into the same match is refused too (not an IntegrityError).
    team = DecayPolicy.objects.get(name="team only")
    before = policy_rows()
    response = browser.post(policy_url(team), form_data(name="team only", scope=""))
    assert form_errors(response) == {
        "__all__": ["The policy “first” already has this relation prefix and scope in tenant default."]
    }
    assert policy_rows() == before
    # Saving a policy unchanged does not clash with itself.
    assert (
        browser.post(policy_url(first), form_data(name="first", ttl_seconds="60", half_life_seconds="")).status_code
        == 302
    )


def test_the_tenant_cannot_be_changed_on_an_existing_policy(browser, db):
    policy = DecayPolicy.objects.create(tenant="default", name="chat", relation_prefix="chat:", ttl_seconds=60)
    response = browser.post(policy_url(policy), form_data(tenant="acme", name="chat", ttl_seconds="60"))
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.tenant == "default"


# --- writes: audit and the policy cache ------------------------------------------------------------


def test_saving_a_policy_audits_and_takes_effect_at_once(browser, client):
    fact = assert_fact(client, "chat:topic", "weather", confidence=0.8)
    assert client.get(f"/v1/facts/{fact['id']}").json()["effective_confidence"] is None  # also fills the cache

    response = browser.post(reverse(POLICY_ADD), form_data(half_life_seconds="3600"))
    assert response.status_code == 302
    policy = DecayPolicy.objects.get()
    assert policy.created_by == "admin:root"
    effective = client.get(f"/v1/facts/{fact['id']}").json()["effective_confidence"]
    assert effective is not None and 0.79 < effective <= 0.8

    created = decay_audit()
    assert [(e.event_type, e.actor, e.tenant, e.target) for e in created] == [
        ("decay_policy_created", "admin:root", "default", str(policy.pk))
    ]
    assert created[0].detail == {
        "name": "chat ages",
        "relation_prefix": "chat:",
        "scope": None,
        "ttl_seconds": None,
        "half_life_seconds": 3600,
        "min_confidence": None,
        "enabled": True,
    }

    # Disabling it: reads stop applying it at once.
    response = browser.post(policy_url(policy), form_data(enabled=None))
    assert response.status_code == 302
    assert client.get(f"/v1/facts/{fact['id']}").json()["effective_confidence"] is None
    updated = decay_audit()[-1]
    assert (updated.event_type, updated.actor, updated.target) == ("decay_policy_updated", "admin:root", str(policy.pk))
    assert updated.detail == {"before": created[0].detail, "after": {**created[0].detail, "enabled": False}}

    # Enabled again with a shorter half-life: the new half-life applies at once.
    response = browser.post(policy_url(policy), form_data(half_life_seconds="1"))
    assert response.status_code == 302
    shorter = client.get(f"/v1/facts/{fact['id']}").json()["effective_confidence"]
    assert shorter is not None and shorter < effective
    changed = decay_audit()[-1].detail
    assert (changed["before"]["half_life_seconds"], changed["before"]["enabled"]) == (3600, False)
    assert (changed["after"]["half_life_seconds"], changed["after"]["enabled"]) == (1, True)

    # Deleting it: gone from reads at once, audited with what it was.
    response = browser.post(policy_url(policy, "delete"), {"post": "yes"})
    assert response.status_code == 302
    assert not DecayPolicy.objects.exists()
    assert client.get(f"/v1/facts/{fact['id']}").json()["effective_confidence"] is None
    deleted = decay_audit()[-1]
    assert (deleted.event_type, deleted.actor, deleted.target) == ("decay_policy_deleted", "admin:root", str(policy.pk))
    assert deleted.detail["half_life_seconds"] == 1 and deleted.detail["name"] == "chat ages"


def test_bulk_delete_audits_every_policy_and_takes_effect_at_once(browser, client):
    one = DecayPolicy.objects.create(tenant="default", name="one", relation_prefix="chat:", half_life_seconds=3600)
    two = DecayPolicy.objects.create(tenant="acme", name="two", relation_prefix="", half_life_seconds=60)
    fact = assert_fact(client, "chat:topic", "weather", confidence=0.8)
    assert client.get(f"/v1/facts/{fact['id']}").json()["effective_confidence"] is not None
    response = browser.post(
        reverse(POLICIES), {"action": "delete_selected", "_selected_action": [str(one.pk), str(two.pk)], "post": "yes"}
    )
    assert response.status_code == 302
    assert not DecayPolicy.objects.exists()
    assert client.get(f"/v1/facts/{fact['id']}").json()["effective_confidence"] is None
    assert sorted((e.event_type, e.tenant, e.target) for e in decay_audit()) == sorted(
        [("decay_policy_deleted", "default", str(one.pk)), ("decay_policy_deleted", "acme", str(two.pk))]
    )


# --- the dry-run preview ---------------------------------------------------------------------------


@pytest.fixture
def facts(client) -> dict[str, dict]:
    return {
        "old_chat": assert_fact(client, "chat:topic", "weather", confidence=0.3),
        "chat_valid": assert_fact(client, "chat:mood", "calm", valid_until="2999-01-01T00:00:00Z", confidence=0.9),
        "chat_team": assert_fact(client, "chat:lang", "en", scope="team", confidence=0.9),
        "memory": assert_fact(client, "memory:color", "red", confidence=0.2),
    }


def unchanged_snapshot() -> tuple:
    return (
        list(Fact.objects.order_by("seq").values_list("id", "expired_at", "expired_by")),
        list(FactHead.objects.order_by("pk").values_list("pk", "fact_id")),
        Event.objects.count(),
        AuditEvent.objects.exclude(event_type__startswith="decay_policy_").count(),
    )


def test_preview_action_shows_what_each_policy_would_expire_and_changes_nothing(browser, facts):
    ttl = DecayPolicy.objects.create(tenant="default", name="chat ttl", relation_prefix="chat:", ttl_seconds=0)
    floor = DecayPolicy.objects.create(
        tenant="default", name="low memory", relation_prefix="memory:", min_confidence=0.5
    )
    nothing = DecayPolicy.objects.create(tenant="default", name="nothing", relation_prefix="none:", ttl_seconds=0)
    before = unchanged_snapshot()

    response = browser.post(
        reverse(POLICIES),
        {"action": "preview_expiry", "_selected_action": [str(ttl.pk), str(floor.pk), str(nothing.pk)]},
    )
    assert response.status_code == 200
    rows = {row["policy"].pk: row for row in response.context["rows"]}
    # TTL 0: every chat fact without valid_until, in any scope.
    assert rows[ttl.pk]["count"] == 2
    assert {str(item["fact"].id) for item in rows[ttl.pk]["sample"]} == {
        facts["old_chat"]["id"],
        facts["chat_team"]["id"],
    }
    assert rows[floor.pk]["count"] == 1
    assert [str(item["fact"].id) for item in rows[floor.pk]["sample"]] == [facts["memory"]["id"]]
    assert rows[nothing.pk]["count"] == 0 and rows[nothing.pk]["sample"] == []
    html = response.content.decode()
    for text in ("chat ttl", "low memory", "stigmem://test/user/erin", "chat:topic", "weather", "memory:color", "red"):
        assert text in html, text
    assert "calm" not in html  # the fact with a valid_until is not a TTL candidate
    assert ">0</strong> facts would expire now" in html

    assert unchanged_snapshot() == before
    assert Fact.objects.filter(expired_at__isnull=False).count() == 0


def test_preview_page_of_one_policy_shows_effective_confidence(browser, facts):
    policy = DecayPolicy.objects.create(
        tenant="default", name="chat decays", relation_prefix="chat:", half_life_seconds=3600, min_confidence=0.5
    )
    before = unchanged_snapshot()
    response = browser.get(policy_url(policy, "preview"))
    assert response.status_code == 200
    (row,) = response.context["rows"]
    assert row["count"] == 1  # only the 0.3 fact is below the 0.5 floor
    (item,) = row["sample"]
    assert str(item["fact"].id) == facts["old_chat"]["id"]
    assert 0.29 < item["effective_confidence"] <= 0.3
    assert ">1</strong> fact would expire now" in response.content.decode()
    assert unchanged_snapshot() == before


def test_preview_of_a_missing_policy_is_404(browser, db):
    for missing in ("9999", "not-a-number"):
        assert browser.get(reverse("admin:decay_decaypolicy_preview", args=[missing])).status_code == 404


# --- who may see it --------------------------------------------------------------------------------


def test_only_staff_reach_the_pages(db, jobs):
    policy = DecayPolicy.objects.create(tenant="default", name="chat", relation_prefix="chat:", ttl_seconds=60)
    pages = [
        reverse(JOBS),
        job_url(jobs["done"]),
        reverse(POLICIES),
        reverse(POLICY_ADD),
        policy_url(policy),
        policy_url(policy, "preview"),
    ]
    for client in (Client(), _logged_in(is_staff=False)):
        for page in pages:
            response = client.get(page)
            assert response.status_code == 302, page
            assert "/admin/login/" in response["Location"]
    # Staff without permissions on these models: refused.
    staff = _logged_in(is_staff=True)
    for page in pages:
        assert staff.get(page).status_code == 403, page
    response = staff.post(reverse(POLICY_ADD), form_data())
    assert response.status_code == 403
    response = staff.post(reverse(POLICIES), {"action": "preview_expiry", "_selected_action": [str(policy.pk)]})
    assert response.status_code == 403
    assert DecayPolicy.objects.count() == 1


def test_forms_need_the_csrf_token(db):
    user = get_user_model().objects.create_superuser("root", email="", password="a-long-test-password")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(reverse(POLICY_ADD), form_data()).status_code == 403
    assert not DecayPolicy.objects.exists()


def _logged_in(*, is_staff: bool) -> Client:
    name = "staff" if is_staff else "member"
    user = get_user_model().objects.create_user(name, password="another-long-password", is_staff=is_staff)
    client = Client()
    client.force_login(user)
    return client
