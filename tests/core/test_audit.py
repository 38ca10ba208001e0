"""The audit log (WIRE.md §4.4): the read endpoint, key and auth-failure entries, retention, admin."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule
from rest_framework.test import APIClient

from stigmem import audit, tasks
from stigmem.audit import AuthFailureCounter, flush_auth_failures, prune_audit
from stigmem.auth import hash_key
from stigmem.keys import issue_key
from stigmem.models import ApiKey, AuditEvent
from stigmem.queries import encode_cursor
from stigmem.schedules import ensure_schedules

ENTRY_FIELDS = {"id", "event_type", "actor", "target", "detail", "tenant_id", "created_at", "entity_uri", "ts"}
CURSOR_INVALID = {"detail": {"code": "cursor_invalid", "message": "cursor is malformed or was not issued by this node"}}


def audit_rows(**filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("id"))


def backdate(event: AuditEvent, when: datetime) -> AuditEvent:
    AuditEvent.objects.filter(pk=event.pk).update(created_at=when)
    event.refresh_from_db()
    return event


def get_all_pages(client: APIClient, **params) -> list[list[int]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/admin/audit", query)
        assert response.status_code == 200, response.content
        body = response.json()
        pages.append([entry["id"] for entry in body["entries"]])
        cursor = body["cursor"]
        assert body["next_cursor"] == cursor
        if cursor is None:
            return pages


# --- GET /v1/admin/audit ------------------------------------------------------------------------


class TestEndpoint:
    def test_entry_shape_newest_first(self, admin_client):
        created = admin_client.post(
            "/v1/auth/keys",
            {"entity_uri": "stigmem://test/agent/new", "permissions": ["read"]},
            format="json",
        )
        assert created.status_code == 201
        key_id = created.json()["id"]
        response = admin_client.get("/v1/admin/audit")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"entries", "cursor", "next_cursor", "total"}
        assert body["cursor"] is None and body["next_cursor"] is None
        assert body["total"] == len(body["entries"]) == 2  # the fixture's key, then the new one
        newest, older = body["entries"]
        assert newest["id"] > older["id"]
        assert set(newest) == ENTRY_FIELDS
        row = AuditEvent.objects.get(pk=newest["id"])
        assert newest == {
            "id": row.id,
            "event_type": "api_key_created",
            "actor": "stigmem://test/agent/admin",
            "target": key_id,
            "detail": {
                "key_id": key_id,
                "entity_uri": "stigmem://test/agent/new",
                "permissions": ["read"],
                "expires_at": ApiKey.objects.get(pk=key_id).expires_at.isoformat(),
            },
            "tenant_id": "default",
            "created_at": row.created_at.isoformat(),
            "entity_uri": "stigmem://test/agent/admin",
            "ts": row.created_at.isoformat(),
        }
        assert datetime.fromisoformat(newest["created_at"]).utcoffset() == timedelta(0)
        assert older["event_type"] == "api_key_created"
        assert older["target"] == str(admin_client.key.id)

    def test_filters(self, make_client):
        reader = make_client(["audit.read"], tenant="filters", entity="stigmem://test/agent/auditor")
        now = timezone.now()
        old = backdate(audit.record("filters", "garden_created", actor="stigmem://a/agent/x"), now - timedelta(days=3))
        mid = backdate(audit.record("filters", "garden_deleted", actor="stigmem://a/agent/y"), now - timedelta(days=2))
        new = backdate(audit.record("filters", "garden_created", actor="stigmem://a/agent/y"), now - timedelta(days=1))

        def ids(**params) -> list[int]:
            response = reader.get("/v1/admin/audit", params)
            assert response.status_code == 200, response.content
            return [entry["id"] for entry in response.json()["entries"]]

        assert ids(event_type="garden_created") == [new.id, old.id]
        assert ids(event_type="no_such_event") == []
        assert ids(principal="stigmem://a/agent/y") == [new.id, mid.id]
        assert ids(since=mid.created_at.isoformat()) == [new.id, mid.id, reader_key_row(reader).id]
        assert ids(until=mid.created_at.isoformat()) == [mid.id, old.id]  # both bounds inclusive
        assert ids(since=old.created_at.isoformat(), until=new.created_at.isoformat(), event_type="garden_created") == [
            new.id,
            old.id,
        ]
        # A datetime without an offset is UTC; "Z" is accepted.
        naive = mid.created_at.astimezone(UTC).replace(tzinfo=None).isoformat()
        assert ids(until=naive) == [mid.id, old.id]
        assert ids(until=mid.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")) == [mid.id, old.id]

    def test_keyset_paging_never_repeats_or_skips(self, make_client):
        reader = make_client(["audit.read"], tenant="paging")
        for n in range(11):
            audit.record("paging", "test_event", target=f"t{n}")
        everything = [row.id for row in AuditEvent.objects.filter(tenant="paging").order_by("-id")]
        assert len(everything) == 12
        pages = get_all_pages(reader, limit=5)
        assert [len(page) for page in pages] == [5, 5, 2]
        assert [entry for page in pages for entry in page] == everything

        # Rows written between pages are newer than the cursor: they never show up in later pages.
        first = reader.get("/v1/admin/audit", {"limit": 4}).json()
        audit.record("paging", "test_event", target="late")
        second = reader.get("/v1/admin/audit", {"limit": 4, "cursor": first["cursor"]}).json()
        assert [e["id"] for e in first["entries"] + second["entries"]] == everything[:8]

    def test_the_default_limit_is_50(self, make_client):
        reader = make_client(["audit.read"], tenant="many")
        AuditEvent.objects.bulk_create(
            [AuditEvent(tenant="many", event_type="test_event", created_at=timezone.now()) for _ in range(60)]
        )
        body = reader.get("/v1/admin/audit").json()
        assert len(body["entries"]) == 50
        assert body["cursor"] is not None
        assert len(reader.get("/v1/admin/audit", {"limit": 500}).json()["entries"]) == 61

    @pytest.mark.parametrize(
        "cursor",
        [
            "garbage",
            encode_cursor("audit", {"i": 5})[:-2] + "xx",  # tampered signature
            encode_cursor("facts", {"s": 5}),  # another endpoint's cursor
            encode_cursor("audit", {"i": "5"}),  # signed by us but not an id
            encode_cursor("audit", {"i": True}),
            encode_cursor("audit", {}),
        ],
    )
    def test_bad_cursor_is_400(self, admin_client, cursor):
        before = AuditEvent.objects.count()
        response = admin_client.get("/v1/admin/audit", {"cursor": cursor})
        assert response.status_code == 400
        assert response.json() == CURSOR_INVALID
        assert AuditEvent.objects.count() == before

    @pytest.mark.parametrize(
        ("params", "loc", "msg", "type_"),
        [
            ({"since": "yesterday"}, "since", "since must be an ISO-8601 datetime", "datetime_parsing"),
            ({"until": "2026-13-01T00:00:00"}, "until", "until must be an ISO-8601 datetime", "datetime_parsing"),
            ({"since": "2026-01-01T00:00:00\x00"}, "since", "since must be an ISO-8601 datetime", "datetime_parsing"),
            ({"limit": "0"}, "limit", "limit must be between 1 and 500", "limit_range"),
            ({"limit": "501"}, "limit", "limit must be between 1 and 500", "limit_range"),
            ({"limit": "ten"}, "limit", "Input should be a valid integer", "int_parsing"),
            ({"event_type": "a\x00b"}, "event_type", "event_type must not contain NUL characters", "string_unicode"),
            ({"principal": "\x00"}, "principal", "principal must not contain NUL characters", "string_unicode"),
        ],
    )
    def test_bad_query_is_422(self, admin_client, params, loc, msg, type_):
        before = AuditEvent.objects.count()
        response = admin_client.get("/v1/admin/audit", params)
        assert response.status_code == 422
        assert response.json() == {"detail": [{"loc": ["query", loc], "msg": msg, "type": type_}]}
        assert AuditEvent.objects.count() == before

    def test_validation_errors_are_reported_together(self, admin_client):
        response = admin_client.get("/v1/admin/audit", {"since": "x", "limit": "0", "cursor": "garbage"})
        assert response.status_code == 422
        assert [entry["loc"] for entry in response.json()["detail"]] == [["query", "since"], ["query", "limit"]]

    def test_needs_audit_read(self, make_client, anon):
        for permissions in (["read"], ["read", "write", "federate", "admin:federation"]):
            response = make_client(permissions).get("/v1/admin/audit")
            assert response.status_code == 403
            assert response.json() == {"detail": "audit.read permission required"}
        assert make_client(["audit.read"]).get("/v1/admin/audit").status_code == 200
        assert make_client(["admin"]).get("/v1/admin/audit").status_code == 200  # admin implies it
        response = anon.get("/v1/admin/audit")
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Bearer"

    def test_tenant_isolation(self, admin_client, make_client):
        other = make_client(["admin"], tenant="other", entity="stigmem://test/agent/other-admin")
        audit.record("other", "secret_event", actor="stigmem://other/agent/x", target="hidden")
        audit.record("default", "visible_event")

        def everything(client: APIClient) -> list[dict]:
            return client.get("/v1/admin/audit", {"limit": 500}).json()["entries"]

        mine = everything(admin_client)
        theirs = everything(other)
        assert {entry["tenant_id"] for entry in mine} == {"default"}
        assert {entry["tenant_id"] for entry in theirs} == {"other"}
        assert "secret_event" not in {entry["event_type"] for entry in mine}
        assert {entry["event_type"] for entry in theirs} == {"api_key_created", "secret_event"}
        # Neither filters nor another tenant's cursor reach across tenants.
        assert admin_client.get("/v1/admin/audit", {"event_type": "secret_event"}).json()["entries"] == []
        cursor = encode_cursor("audit", {"i": AuditEvent.objects.order_by("-id").first().id + 1})
        paged = admin_client.get("/v1/admin/audit", {"cursor": cursor, "limit": 500}).json()["entries"]
        assert {entry["tenant_id"] for entry in paged} == {"default"}


def reader_key_row(client: APIClient) -> AuditEvent:
    return AuditEvent.objects.get(event_type="api_key_created", target=str(client.key.id))


# --- API key create / revoke --------------------------------------------------------------------


class TestKeyEvents:
    def test_created_key_is_audited_without_key_material(self, admin_client):
        raw = "k" * 40
        response = admin_client.post(
            "/v1/auth/keys",
            {"raw_key": raw, "entity_uri": "stigmem://test/agent/Bot", "permissions": ["write", "read"]},
            format="json",
        )
        assert response.status_code == 201
        key = ApiKey.objects.get(pk=response.json()["id"])
        row = AuditEvent.objects.get(event_type="api_key_created", target=str(key.id))
        assert row.tenant == "default"
        assert row.actor == "stigmem://test/agent/admin"
        assert row.detail == {
            "key_id": str(key.id),
            "entity_uri": "stigmem://test/agent/bot",
            "permissions": ["read", "write"],
            "expires_at": key.expires_at.isoformat(),
        }
        stored = json.dumps([row.tenant, row.event_type, row.actor, row.target, row.detail])
        for secret in (raw, hash_key(raw), key.key_hash, key.key_prefix):
            assert secret not in stored

    def test_generated_key_is_not_in_the_log(self, admin_client):
        response = admin_client.post(
            "/v1/auth/keys", {"entity_uri": "stigmem://test/agent/gen", "permissions": ["read"]}, format="json"
        )
        raw = response.json()["api_key"]
        for row in AuditEvent.objects.all():
            assert raw not in json.dumps([row.actor, row.target, row.detail])
            assert raw[:8] not in json.dumps(row.detail)

    def test_duplicate_key_writes_no_entry(self, admin_client):
        body = {"raw_key": "d" * 40, "entity_uri": "stigmem://test/agent/dup", "permissions": ["read"]}
        assert admin_client.post("/v1/auth/keys", body, format="json").status_code == 201
        before = audit_rows(event_type="api_key_created")
        response = admin_client.post("/v1/auth/keys", body, format="json")
        assert response.status_code == 409
        assert audit_rows(event_type="api_key_created") == before

    def test_key_and_entry_commit_together(self, db, monkeypatch):
        def broken(*args, **kwargs):
            raise RuntimeError("audit store unavailable")

        with monkeypatch.context() as patched, pytest.raises(RuntimeError):
            patched.setattr(audit, "record", broken)
            issue_key(tenant="default", entity_uri="stigmem://test/agent/lost", permissions=["read"])
        assert not ApiKey.objects.filter(entity_uri="stigmem://test/agent/lost").exists()

        # ...and an enclosing transaction that rolls back takes both with it.
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            issue_key(tenant="default", entity_uri="stigmem://test/agent/lost", permissions=["read"])
            1 / 0  # noqa: B018
        assert not ApiKey.objects.filter(entity_uri="stigmem://test/agent/lost").exists()
        assert AuditEvent.objects.count() == 0

    def test_revocation_is_audited_once(self, admin_client, make_client):
        victim = make_client(["read"], entity="stigmem://test/agent/victim")
        assert admin_client.delete(f"/v1/auth/keys/{victim.key.id}").status_code == 204
        rows = audit_rows(event_type="api_key_revoked")
        assert len(rows) == 1
        assert rows[0].tenant == "default"
        assert rows[0].actor == "stigmem://test/agent/admin"
        assert rows[0].target == str(victim.key.id)
        assert rows[0].detail == {"key_id": str(victim.key.id), "entity_uri": "stigmem://test/agent/victim"}
        # Revoking again changes nothing and is not audited again.
        assert admin_client.delete(f"/v1/auth/keys/{victim.key.id}").status_code == 204
        assert audit_rows(event_type="api_key_revoked") == rows

    def test_refused_revocations_write_nothing(self, admin_client, make_client):
        foreign = make_client(["read"], tenant="other")
        bob = make_client(["read"], entity="stigmem://test/agent/bob")
        alice = make_client(["read"], entity="stigmem://test/agent/alice")
        assert admin_client.delete(f"/v1/auth/keys/{foreign.key.id}").status_code == 404
        assert alice.delete(f"/v1/auth/keys/{bob.key.id}").status_code == 404
        assert admin_client.delete("/v1/auth/keys/not-a-uuid").status_code == 404
        assert audit_rows(event_type="api_key_revoked") == []

    def test_revocation_and_entry_commit_together(self, admin_client, make_client, monkeypatch):
        victim = make_client(["read"], entity="stigmem://test/agent/victim")

        def broken(*args, **kwargs):
            raise RuntimeError("audit store unavailable")

        with monkeypatch.context() as patched, pytest.raises(RuntimeError):
            patched.setattr(audit, "record", broken)
            admin_client.delete(f"/v1/auth/keys/{victim.key.id}")
        assert ApiKey.objects.get(pk=victim.key.pk).revoked_at is None
        assert victim.get("/v1/me").status_code == 200
        assert audit_rows(event_type="api_key_revoked") == []


# --- failed authentications ---------------------------------------------------------------------


class FakeTimer:
    def __init__(self, delay: float, fire):
        self.delay = delay
        self.fire = fire
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def counter(monkeypatch):
    """The process's failure counter, with a clock and timers the test controls."""
    timers: list[FakeTimer] = []
    clock = FakeClock()

    def start_timer(delay, fire):
        timers.append(FakeTimer(delay, fire))
        return timers[-1]

    replacement = AuthFailureCounter(clock=clock, start_timer=start_timer)
    monkeypatch.setattr(audit, "auth_failures", replacement)
    replacement.timers = timers
    replacement.fake_clock = clock
    return replacement


def bad_key_client(raw: str = "sk_not-a-real-key-but-long-enough-to-look-real") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


class TestAuthFailures:
    def test_failures_are_aggregated_into_one_row_per_reason_and_ip(self, db, counter):
        raw = "sk_brute-force-guess-0123456789abcdef"
        for _ in range(7):
            response = bad_key_client(raw).get("/v1/me")
            assert response.status_code == 401
            assert response.json() == {"detail": "invalid, expired or revoked API key"}
        for header in ("Basic dXNlcjpwYXNz", "Bearer "):
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=header)
            assert client.get("/v1/facts").status_code == 401
        bad_key_client(raw).get("/v1/me", REMOTE_ADDR="203.0.113.9")
        assert audit_rows(event_type="auth_failure") == []  # nothing written per failure

        assert flush_auth_failures() == 3
        rows = audit_rows(event_type="auth_failure")
        summary = {(row.detail["reason"], row.detail["ip"]): row.detail["count"] for row in rows}
        assert summary == {
            ("invalid_key", "127.0.0.1"): 7,
            ("malformed_authorization", "127.0.0.1"): 2,
            ("invalid_key", "203.0.113.9"): 1,
        }
        row = next(r for r in rows if r.detail["ip"] == "127.0.0.1" and r.detail["reason"] == "invalid_key")
        assert row.tenant == "default"
        assert row.actor == "ip:127.0.0.1"
        assert row.target == ""
        assert set(row.detail) == {"count", "reason", "ip", "window_start", "window_end"}
        start = datetime.fromisoformat(row.detail["window_start"])
        end = datetime.fromisoformat(row.detail["window_end"])
        assert start <= end == row.created_at
        for stored in rows:
            text = json.dumps([stored.actor, stored.target, stored.detail])
            assert raw not in text and hash_key(raw) not in text and "dXNlcjpwYXNz" not in text
        # Flushed counts are gone: the next flush writes nothing.
        assert flush_auth_failures() == 0
        assert len(audit_rows(event_type="auth_failure")) == 3

    def test_successful_and_anonymous_requests_are_not_counted(self, client, anon, counter):
        assert client.get("/v1/me").status_code == 200
        assert anon.get("/v1/me").status_code == 401  # no credentials at all: not a failed authentication
        assert flush_auth_failures() == 0
        assert counter.timers == []

    def test_the_window_timer_writes_the_counts(self, db, counter):
        for _ in range(4):
            bad_key_client().get("/v1/me")
        assert len(counter.timers) == 1  # armed once, by the window's first failure
        timer = counter.timers[0]
        assert timer.delay == audit.AUTH_FAILURE_WINDOW_S
        timer.fire()
        assert [row.detail["count"] for row in audit_rows(event_type="auth_failure")] == [4]
        # The next failure opens a new window with its own timer.
        bad_key_client().get("/v1/me")
        assert len(counter.timers) == 2
        # A stale timer of a finished window does not cut the new window short.
        timer.fire()
        assert len(audit_rows(event_type="auth_failure")) == 1
        counter.timers[1].fire()
        assert [row.detail["count"] for row in audit_rows(event_type="auth_failure")] == [4, 1]

    def test_a_failure_after_the_window_writes_the_previous_window(self, db, counter):
        for _ in range(3):
            bad_key_client().get("/v1/me")
        counter.fake_clock.now += audit.AUTH_FAILURE_WINDOW_S - 1
        bad_key_client().get("/v1/me")
        assert audit_rows(event_type="auth_failure") == []
        counter.fake_clock.now += 1  # the window is over, but its timer has not fired (yet)
        bad_key_client().get("/v1/me")
        assert [row.detail["count"] for row in audit_rows(event_type="auth_failure")] == [4]
        assert counter.timers[0].cancelled
        assert len(counter.timers) == 2
        counter.timers[1].fire()
        assert [row.detail["count"] for row in audit_rows(event_type="auth_failure")] == [4, 1]

    def test_many_addresses_are_capped(self, db, counter, monkeypatch):
        monkeypatch.setattr(audit, "MAX_AUTH_FAILURE_SOURCES", 3)
        for n in range(10):
            bad_key_client().get("/v1/me", REMOTE_ADDR=f"198.51.100.{n}")
        assert flush_auth_failures() == 4
        summary = {row.detail["ip"]: row.detail["count"] for row in audit_rows(event_type="auth_failure")}
        assert summary == {"198.51.100.0": 1, "198.51.100.1": 1, "198.51.100.2": 1, "*": 7}

    def test_counts_survive_a_failed_write(self, db, counter, monkeypatch):
        for _ in range(2):
            bad_key_client().get("/v1/me")

        def broken(*args, **kwargs):
            raise RuntimeError("database unavailable")

        with monkeypatch.context() as patched:
            patched.setattr(AuditEvent.objects, "bulk_create", broken)
            assert flush_auth_failures() == 0
        assert audit_rows(event_type="auth_failure") == []
        assert len(counter.timers) == 2  # a new timer retries with the next window
        bad_key_client().get("/v1/me")
        counter.timers[1].fire()
        rows = audit_rows(event_type="auth_failure")
        assert [row.detail["count"] for row in rows] == [3]

    def test_the_real_timer_writes_from_its_own_thread(self, transactional_db):
        counter = AuthFailureCounter(window_s=0.05)
        counter.note("invalid_key", "192.0.2.7")
        deadline = time.monotonic() + 30
        while not AuditEvent.objects.filter(event_type="auth_failure").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        row = AuditEvent.objects.get(event_type="auth_failure")
        assert row.detail["count"] == 1
        assert row.detail["ip"] == "192.0.2.7"


# --- retention ----------------------------------------------------------------------------------


@pytest.fixture
def aged_rows(db):
    """Rows 400, 100 and 1 days old, plus one fresh, across two tenants."""
    now = timezone.now()
    rows = {}
    for days, tenant in ((400, "default"), (400, "other"), (100, "default"), (1, "other"), (0, "default")):
        rows[(days, tenant)] = backdate(audit.record(tenant, "test_event"), now - timedelta(days=days))
    return rows


class TestRetention:
    def test_prunes_rows_older_than_the_setting(self, aged_rows, settings):
        settings.STIGMEM_AUDIT_RETENTION_DAYS = 365
        assert prune_audit() == 2
        kept = {(row.tenant, row.pk) for row in AuditEvent.objects.all()}
        assert kept == {(t, r.pk) for (d, t), r in aged_rows.items() if d < 365}
        settings.STIGMEM_AUDIT_RETENTION_DAYS = 30
        assert prune_audit() == 1
        assert AuditEvent.objects.count() == 2
        assert prune_audit() == 0

    def test_zero_keeps_everything(self, aged_rows, settings):
        settings.STIGMEM_AUDIT_RETENTION_DAYS = 0
        assert prune_audit() == 0
        assert AuditEvent.objects.count() == 5

    def test_deletes_in_chunks(self, db):
        old = timezone.now() - timedelta(days=1000)
        AuditEvent.objects.bulk_create([AuditEvent(tenant="default", event_type="e", created_at=old) for _ in range(7)])
        seen: list[int] = []
        assert prune_audit(days=10, chunk_size=3, progress=seen.append) == 7
        assert seen == [3, 6, 7]
        assert AuditEvent.objects.count() == 0

    def test_task_and_schedule(self, aged_rows, settings):
        settings.STIGMEM_AUDIT_RETENTION_DAYS = 50
        assert tasks.prune_audit() == 3
        assert AuditEvent.objects.count() == 2
        ensure_schedules()
        schedule = Schedule.objects.get(name="stigmem.prune_audit")
        assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == (
            "stigmem.tasks.prune_audit",
            Schedule.MINUTES,
            1440,
            -1,
        )

    def test_management_command(self, aged_rows, settings, capsys):
        settings.STIGMEM_AUDIT_RETENTION_DAYS = 365
        call_command("prune_audit")
        assert capsys.readouterr().out == "pruned 2 audit rows older than 365 days\n"
        call_command("prune_audit", "--days", "50")
        assert capsys.readouterr().out == "pruned 1 audit rows older than 50 days\n"
        call_command("prune_audit", "--days", "0")
        assert capsys.readouterr().out == "audit retention is 0 (keep forever): nothing pruned\n"
        assert AuditEvent.objects.count() == 2

    @pytest.mark.parametrize(("args", "message"), [(["--days", "-1"], "--days"), (["--interval", "0"], "--interval")])
    def test_management_command_refuses_bad_options(self, aged_rows, args, message):
        with pytest.raises(CommandError, match=message):
            call_command("prune_audit", *args)
        assert AuditEvent.objects.count() == 5


# --- admin --------------------------------------------------------------------------------------


def admin_url(page: str, *args) -> str:
    return reverse(f"admin:stigmem_auditevent_{page}", args=args)


class TestAdmin:
    def test_list_filters_search_and_detail(self, browser, make_client):
        make_client(["read"], entity="stigmem://test/agent/listed")
        event = audit.record("other", "garden_created", actor="stigmem://x/agent/needle", detail={"b": 1, "a": "<x>"})
        changelist = browser.get(admin_url("changelist"))
        assert changelist.status_code == 200
        assert changelist.context["cl"].result_count == 2
        by_type = browser.get(admin_url("changelist"), {"event_type": "garden_created"})
        assert [row.pk for row in by_type.context["cl"].result_list] == [event.pk]
        by_tenant = browser.get(admin_url("changelist"), {"tenant": "default"})
        assert [row.event_type for row in by_tenant.context["cl"].result_list] == ["api_key_created"]
        searched = browser.get(admin_url("changelist"), {"q": "needle"})
        assert [row.pk for row in searched.context["cl"].result_list] == [event.pk]
        today = timezone.now()
        by_day = browser.get(
            admin_url("changelist"),
            {"created_at__year": today.year, "created_at__month": today.month, "created_at__day": today.day},
        )
        assert by_day.status_code == 200
        assert by_day.context["cl"].result_count == 2

        page = browser.get(admin_url("change", event.pk))
        assert page.status_code == 200
        assert "<pre>{\n  &quot;a&quot;: &quot;&lt;x&gt;&quot;,\n  &quot;b&quot;: 1\n}</pre>" in page.content.decode()

    def test_read_only(self, browser):
        event = audit.record("default", "garden_created", actor="stigmem://x/agent/a")
        assert browser.get(admin_url("add")).status_code == 403
        assert browser.post(admin_url("change", event.pk), {"actor": "forged"}).status_code == 403
        assert browser.post(admin_url("delete", event.pk), {"post": "yes"}).status_code == 403
        event.refresh_from_db()
        assert event.actor == "stigmem://x/agent/a"

    def test_admin_key_actions_are_audited(self, browser, make_client):
        first = make_client(["read"], entity="stigmem://test/agent/first")
        second = make_client(["read"], entity="stigmem://test/agent/second")
        response = browser.post(
            reverse("admin:stigmem_apikey_changelist"),
            {"action": "revoke_keys", "_selected_action": [str(first.key.pk), str(second.key.pk)]},
            follow=True,
        )
        assert "Revoked 2 key(s)." in [str(m) for m in get_messages(response.wsgi_request)]
        rows = audit_rows(event_type="api_key_revoked")
        assert {(row.actor, row.target) for row in rows} == {
            ("admin:root", str(first.key.pk)),
            ("admin:root", str(second.key.pk)),
        }
        # Revoking already revoked keys again revokes and audits nothing.
        response = browser.post(
            reverse("admin:stigmem_apikey_changelist"),
            {"action": "revoke_keys", "_selected_action": [str(first.key.pk)]},
            follow=True,
        )
        assert "Revoked 0 key(s)." in [str(m) for m in get_messages(response.wsgi_request)]
        assert audit_rows(event_type="api_key_revoked") == rows

        expires = timezone.now() + timedelta(days=3)
        browser.post(
            reverse("admin:stigmem_apikey_add"),
            {
                "tenant": "default",
                "entity_uri": "stigmem://test/agent/from-admin",
                "permissions": ["read"],
                "expires_at_0": expires.strftime("%Y-%m-%d"),
                "expires_at_1": expires.strftime("%H:%M:%S"),
            },
        )
        key = ApiKey.objects.get(entity_uri="stigmem://test/agent/from-admin")
        row = AuditEvent.objects.get(event_type="api_key_created", target=str(key.pk))
        assert row.actor == "admin:root"
        assert row.detail["entity_uri"] == "stigmem://test/agent/from-admin"
