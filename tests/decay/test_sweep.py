"""The sweep engine (decay/sweep.py): TTL, floors, half-lives, policies, chunks, resume, lock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings

from decay import sweep
from decay.models import DecayPolicy, SweepLock
from decay.sweep import SweepBusy, SweepRequest, facts_in_scope, preview, run_sweep
from stigmem.models import AuditEvent, Conflict, Event, Fact, Job
from tests.decay.sweep_helpers import (
    DAY,
    HOUR,
    T0,
    ago,
    body,
    current_ids,
    expired_ids,
    expiry_events,
    frozen,
    snapshot,
    write,
)

pytestmark = pytest.mark.django_db


def sweep_at(now, request: SweepRequest, **kwargs):
    with frozen(now):
        return run_sweep(request, actor="stigmem://test/agent/admin", **kwargs)


def policy(**fields) -> DecayPolicy:
    fields.setdefault("tenant", "default")
    fields.setdefault("name", f"p{DecayPolicy.objects.count()}")
    return DecayPolicy.objects.create(**fields)


# --- TTL -----------------------------------------------------------------------------------------


def test_ttl_expires_older_facts_only_and_skips_valid_until():
    old, valid = write(ago(2 * DAY), body("old"), body("valid", valid_until="2099-01-01T00:00:00Z"))
    (new,) = write(ago(HOUR), body("new"))
    result = sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=DAY))
    assert (result.scanned, result.decayed, result.dry_run) == (1, 1, False)
    assert expired_ids() == {old.id}
    fact = Fact.objects.get(id=old.id)
    assert fact.expired_at == T0 and fact.expired_by == "decay:sweep"
    # Content untouched.
    assert (fact.value_v, fact.confidence, fact.timestamp) == (old.value_v, old.confidence, old.timestamp)
    assert current_ids() == {new.id, valid.id}


def test_ttl_boundary_is_strict():
    (exact,) = write(ago(DAY), body("exact"))
    (older,) = write(ago(DAY) - timedelta(microseconds=1), body("older"))
    assert sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=DAY)).decayed == 1
    assert expired_ids() == {older.id}
    assert exact.id not in expired_ids()


def test_ttl_zero_expires_every_fact_without_valid_until():
    a, b = write(ago(1), body("a"), body("b"))
    (future,) = write(T0 + timedelta(hours=1), body("future"))
    (_valid,) = write(ago(DAY), body("valid", valid_until="2099-01-01T00:00:00Z"))
    assert sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=0)).decayed == 3
    assert expired_ids() == {a.id, b.id, future.id}


# --- confidence floor ----------------------------------------------------------------------------


def test_floor_applies_to_current_facts_only():
    (superseded,) = write(ago(DAY), body("k", value="first", confidence=0.2))
    (current,) = write(ago(HOUR), body("k", value="second", confidence=0.3))
    (_high,) = write(ago(HOUR), body("h", confidence=0.9))
    result = sweep_at(T0, SweepRequest(tenant="default", min_confidence=0.5))
    assert (result.scanned, result.decayed) == (1, 1)
    assert expired_ids() == {current.id}
    assert superseded.id not in expired_ids()
    assert [e["reason"] for e in expiry_events()] == ["confidence"]


def test_floor_equal_confidence_stays_and_zero_floor_expires_nothing():
    write(ago(HOUR), body("eq", confidence=0.5), body("low", confidence=0.1))
    assert sweep_at(T0, SweepRequest(tenant="default", min_confidence=0.0)).decayed == 0
    assert sweep_at(T0, SweepRequest(tenant="default", min_confidence=0.5)).decayed == 1
    assert set(Fact.objects.filter(expired_at__isnull=False).values_list("confidence", flat=True)) == {0.1}


def test_half_life_boundary_exactly_at_floor_stays_just_below_expires():
    policy(relation_prefix="memory:", half_life_seconds=HOUR)
    # 0.8 x 0.5^(age/1h) reaches 0.4 at age 1h exactly.
    (_at_floor,) = write(ago(HOUR), body("at", confidence=0.8))
    (below,) = write(ago(HOUR) - timedelta(microseconds=1), body("below", confidence=0.8))
    (_young,) = write(ago(HOUR / 2), body("young", confidence=0.8))
    result = sweep_at(T0, SweepRequest(tenant="default", min_confidence=0.4))
    assert result.decayed == 1
    assert expired_ids() == {below.id}


def test_half_life_with_confidence_already_below_floor_expires_even_from_the_future():
    policy(relation_prefix="memory:", half_life_seconds=HOUR)
    (future,) = write(T0 + timedelta(days=1), body("future", confidence=0.3))
    (_fine,) = write(ago(1), body("fine", confidence=0.9))
    assert sweep_at(T0, SweepRequest(tenant="default", min_confidence=0.4)).decayed == 1
    assert expired_ids() == {future.id}


def test_effective_confidence_on_read_is_half_after_one_half_life(make_client):
    policy(relation_prefix="memory:", half_life_seconds=DAY)
    (fact,) = write(ago(DAY), body("read", confidence=0.8))
    reader = make_client(["read"])
    with frozen(T0):
        response = reader.get(f"/v1/facts/{fact.id}")
    assert response.status_code == 200
    assert response.json()["effective_confidence"] == pytest.approx(0.4, abs=1e-12)


# --- policies ------------------------------------------------------------------------------------


def test_policy_mode_longest_prefix_wins():
    policy(relation_prefix="memory:", ttl_seconds=HOUR)
    policy(relation_prefix="memory:keep", ttl_seconds=30 * DAY)
    (short,) = write(ago(DAY), body("a", relation="memory:note"))
    (_kept,) = write(ago(DAY), body("b", relation="memory:keep:this"))
    (_other,) = write(ago(DAY), body("c", relation="other:note"))
    result = sweep_at(T0, SweepRequest(tenant="default"))
    assert result.decayed == 1
    assert expired_ids() == {short.id}
    assert expiry_events()[0]["reason"] == "ttl"


def test_policy_mode_scope_specific_beats_any_scope():
    policy(relation_prefix="memory:", ttl_seconds=30 * DAY)
    policy(relation_prefix="memory:", scope="team", ttl_seconds=HOUR)
    (_local,) = write(ago(DAY), body("a"))
    (team,) = write(ago(DAY), body("b", scope="team"))
    assert sweep_at(T0, SweepRequest(tenant="default")).decayed == 1
    assert expired_ids() == {team.id}


def test_policy_more_specific_without_rules_shields_its_facts():
    policy(relation_prefix="", ttl_seconds=HOUR)
    policy(relation_prefix="memory:pinned", half_life_seconds=DAY)
    (_pinned,) = write(ago(DAY), body("a", relation="memory:pinned"))
    (other,) = write(ago(DAY), body("b", relation="memory:note"))
    assert sweep_at(T0, SweepRequest(tenant="default")).decayed == 1
    assert expired_ids() == {other.id}


def test_policy_floor_with_half_life_and_disabled_policies_ignored():
    policy(relation_prefix="memory:", half_life_seconds=HOUR, min_confidence=0.3)
    policy(relation_prefix="", ttl_seconds=1, enabled=False)
    (decayed_fact,) = write(ago(2 * HOUR), body("a", confidence=0.9))  # 0.225 < 0.3
    (_fresh,) = write(ago(HOUR), body("b", confidence=0.9))  # 0.45
    (_ungoverned,) = write(ago(DAY), body("c", relation="other:x", confidence=0.1))
    assert sweep_at(T0, SweepRequest(tenant="default")).decayed == 1
    assert expired_ids() == {decayed_fact.id}


def test_no_policies_and_no_parameters_expire_nothing_but_audit_the_sweep():
    write(ago(DAY), body("a"))
    result = sweep_at(T0, SweepRequest(tenant="default"))
    assert (result.scanned, result.decayed) == (0, 0)
    assert expired_ids() == set()
    assert AuditEvent.objects.filter(event_type="decay_sweep").count() == 1


def test_preview_counts_what_the_policy_would_expire():
    p = policy(relation_prefix="memory:", ttl_seconds=HOUR, enabled=False)
    policy(relation_prefix="memory:keep", ttl_seconds=30 * DAY)
    facts = write(ago(DAY), *[body(f"e{i}") for i in range(5)], body("k", relation="memory:keep:x"))
    with frozen(T0):
        before = snapshot()
        count, sample = preview(p, limit=3)
        assert snapshot() == before
    assert count == 5
    assert [f.id for f in sample] == [f.id for f in facts[:3]]


# --- dry run, scope, tenants ---------------------------------------------------------------------


def test_dry_run_counts_and_changes_nothing():
    write(ago(DAY), body("a"), body("b"), body("c", confidence=0.1))
    before = snapshot()
    result = sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR, min_confidence=0.5, dry_run=True))
    assert (result.scanned, result.decayed, result.dry_run) == (3, 0, True)
    assert snapshot() == before


def test_scope_filter_and_tenant_isolation():
    (local,) = write(ago(DAY), body("a"))
    (team,) = write(ago(DAY), body("b", scope="team"))
    (foreign,) = write(ago(DAY), body("a"), tenant="acme")
    assert sweep_at(T0, SweepRequest(tenant="default", scope="team", ttl_seconds=HOUR)).decayed == 1
    assert expired_ids() == {team.id}
    assert sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR)).decayed == 1
    assert expired_ids() == {team.id, local.id}
    assert expired_ids("acme") == set()
    assert current_ids("acme") == {foreign.id}
    assert expiry_events("acme") == []


def test_facts_in_scope_counts_the_tenant_and_scope():
    write(ago(DAY), body("a"), body("b", scope="team"))
    write(ago(DAY), body("a"), tenant="acme")
    assert facts_in_scope("default", None) == 2
    assert facts_in_scope("default", "team") == 1
    assert facts_in_scope("nobody", None) == 0


# --- effects: heads, reads, events, audit, idempotence -------------------------------------------


def test_expired_key_leaves_reads_but_shows_with_include_expired(make_client):
    (fact,) = write(ago(DAY), body("gone"))
    sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR))
    reader = make_client(["read"])
    entity = "stigmem://test/gone"
    assert reader.get("/v1/facts", {"entity": entity}).json()["facts"] == []
    # The key has no current value any more (as after a retraction); the fact itself is still there.
    assert reader.get("/v1/facts", {"entity": entity, "include_expired": "true"}).json()["facts"] == []
    query = {"entity": entity, "include_expired": "true", "include_contradicted": "true"}
    records = reader.get("/v1/facts", query).json()["facts"]
    assert [(r["id"], r["expired"]) for r in records] == [(str(fact.id), True)]
    detail = reader.get(f"/v1/facts/{fact.id}")
    assert detail.status_code == 200 and detail.json()["expired"] is True


def test_writes_after_expiry_treat_the_key_as_without_current_value():
    (gone,) = write(ago(DAY), body("k", value="old"))
    (other,) = write(ago(DAY), body("r", value="old"))
    sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR))
    assert current_ids() == set()
    # Another source's different value is no dispute with an expired value: no conflict, it is current.
    (newer,) = write(T0, body("k", value="new", source="stigmem://test/agent/other"))
    assert current_ids() == {newer.id}
    assert not Conflict.objects.exists()
    assert not Fact.objects.get(id=newer.id).contradicted
    # A retraction of a key whose value expired leaves it without a current value.
    write(T0, body("r", value="old", confidence=0.0))
    assert current_ids() == {newer.id}
    assert Fact.objects.get(id=gone.id).expired_at == T0 and Fact.objects.get(id=other.id).expired_at == T0


def test_events_once_per_fact_audit_once_and_rerun_is_idempotent():
    facts = write(ago(DAY), *[body(f"e{i}", relation=f"memory:r{i % 3}") for i in range(7)])
    first = sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR))
    assert first.decayed == 7
    payloads = expiry_events()
    assert sorted(p["fact_id"] for p in payloads) == sorted(str(f.id) for f in facts)
    assert {p["reason"] for p in payloads} == {"ttl"}
    by_id = {str(f.id): f for f in facts}
    for p in payloads:
        f = by_id[p["fact_id"]]
        assert (p["entity"], p["relation"], p["scope"]) == (f.entity, f.relation, f.scope)
    seqs = list(Event.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gaps, no duplicates
    audit_rows = AuditEvent.objects.filter(event_type="decay_sweep")
    assert audit_rows.count() == 1
    detail = audit_rows.get().detail
    assert (detail["decayed"], detail["scanned"], detail["ttl_seconds"]) == (7, 7, HOUR)

    again = sweep_at(T0 + timedelta(minutes=1), SweepRequest(tenant="default", ttl_seconds=HOUR))
    assert (again.scanned, again.decayed) == (0, 0)
    assert len(expiry_events()) == 7
    assert Fact.objects.get(id=facts[0].id).expired_at == T0


def test_reason_is_ttl_when_both_rules_match():
    write(ago(DAY), body("both", confidence=0.1), body("conf", valid_until="2099-01-01T00:00:00Z", confidence=0.1))
    sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR, min_confidence=0.5))
    assert sorted(p["reason"] for p in expiry_events()) == ["confidence", "ttl"]


# --- chunks, jobs, crash and resume --------------------------------------------------------------


@override_settings(STIGMEM_DECAY_CHUNK=3)
def test_events_are_numbered_densely_in_fact_order_in_whole_and_partial_steps():
    # Steps of 3 seqs: (0,3] and (3,6] expire whole; (6,9] keeps a new fact; (9,12] expires whole;
    # (12,15] holds another tenant's fact.
    old = write(ago(DAY), *[body(f"a{i}") for i in range(6)])
    write(ago(60), body("fresh"))
    old += write(ago(DAY), *[body(f"b{i}") for i in range(5)])
    write(ago(DAY), body("theirs"), tenant="other")
    old += write(ago(DAY), *[body(f"c{i}") for i in range(2)])
    before = list(Event.objects.values_list("seq", flat=True))

    assert sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR)).decayed == len(old) == 13
    rows = list(Event.objects.filter(topic="fact.expired").order_by("seq").values_list("seq", "payload"))
    seqs = [seq for seq, _ in rows]
    first = max(before, default=0) + 1
    assert seqs == list(range(first, first + 13))
    assert [payload["fact_id"] for _, payload in rows] == [str(f.id) for f in sorted(old, key=lambda f: f.seq)]
    assert not Fact.objects.filter(tenant="other", expired_at__isnull=False).exists()


@override_settings(STIGMEM_DECAY_CHUNK=3)
def test_chunks_report_progress_and_save_job_position():
    write(ago(DAY), *[body(f"e{i}") for i in range(10)])
    job = Job.objects.create(tenant="default", kind="decay")
    seen = []
    result = sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR), job=job, progress=seen.append)
    assert result.decayed == 10
    assert len(seen) == 5 and seen == sorted(seen) and seen[-1] == 1.0
    job.refresh_from_db()
    assert (job.scanned, job.decayed, job.progress) == (10, 10, 1.0)
    assert job.position == Fact.objects.order_by("-seq").first().seq
    assert set(Fact.objects.values_list("expired_by", flat=True)) == {f"decay:{job.id}"}


@override_settings(STIGMEM_DECAY_CHUNK=4)
def test_crash_mid_sweep_then_rerun_finishes_exactly_once(monkeypatch):
    facts = write(ago(DAY), *[body(f"e{i}") for i in range(10)])
    job = Job.objects.create(tenant="default", kind="decay")
    real = sweep._record_chunk
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker died")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "_record_chunk", crash_on_second)
    with pytest.raises(RuntimeError):
        sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR), job=Job.objects.get(pk=job.pk))
    job.refresh_from_db()
    assert (job.decayed, job.position) == (4, facts[3].seq)
    assert len(expired_ids()) == 4 and len(expiry_events()) == 4
    assert not SweepLock.objects.exists()  # released on the way out
    assert AuditEvent.objects.filter(event_type="decay_sweep").count() == 0

    monkeypatch.setattr(sweep, "_record_chunk", real)
    result = sweep_at(T0 + timedelta(minutes=5), SweepRequest(tenant="default", ttl_seconds=HOUR), job=job)
    assert (result.scanned, result.decayed) == (10, 10)
    job.refresh_from_db()
    assert (job.scanned, job.decayed, job.progress) == (10, 10, 1.0)
    assert expired_ids() == {f.id for f in facts}
    assert sorted(p["fact_id"] for p in expiry_events()) == sorted(str(f.id) for f in facts)
    assert current_ids() == set()
    assert AuditEvent.objects.filter(event_type="decay_sweep").count() == 1


@override_settings(STIGMEM_DECAY_CHUNK=1000, STIGMEM_DECAY_CHUNK_MS=60_000)
@pytest.mark.parametrize(("writers_waiting", "transactions"), [(False, 1), (True, 2)])
def test_a_queued_writer_ends_the_chunk_after_the_step_in_flight(monkeypatch, writers_waiting, transactions):
    # 1,200 facts in two steps (500, then the 700 left): one transaction, unless a writer queues.
    write(ago(DAY), *[body(f"e{i}") for i in range(1200)])
    monkeypatch.setattr(sweep, "writers_waiting", lambda: writers_waiting)
    job = Job.objects.create(tenant="default", kind="decay")
    seen = []
    result = sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR), job=job, progress=seen.append)
    assert result.decayed == 1200 and len(expiry_events()) == 1200
    assert AuditEvent.objects.get(event_type="decay_sweep").detail["chunks"] == transactions
    assert len(seen) == transactions + 1  # once per transaction, and 1.0 at the end


@override_settings(STIGMEM_DECAY_CHUNK=1000)
def test_many_distinct_confidences_split_the_chunk(monkeypatch):
    monkeypatch.setattr(sweep, "MAX_DISTINCT_CONFIDENCES", 4)
    policy(relation_prefix="memory:", half_life_seconds=HOUR)
    confidences = [0.5 + i / 100 for i in range(20)]
    facts = write(ago(10 * HOUR), *[body(f"e{i}", confidence=c) for i, c in enumerate(confidences)])
    (_fresh,) = write(ago(1), body("fresh", confidence=0.9))
    assert sweep_at(T0, SweepRequest(tenant="default", min_confidence=0.01)).decayed == 20
    assert expired_ids() == {f.id for f in facts}


# --- the lock ------------------------------------------------------------------------------------


def test_sweep_busy_while_another_sweep_holds_the_lock():
    write(ago(DAY), body("a"))
    SweepLock.objects.create(tenant="default", owner="other", until=T0 + timedelta(minutes=5), acquired_at=T0)
    before = snapshot()
    with pytest.raises(SweepBusy):
        sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR))
    assert snapshot() == before
    assert SweepLock.objects.get().owner == "other"
    # Another tenant is not blocked, and a dry run needs no lock.
    assert sweep_at(T0, SweepRequest(tenant="acme", ttl_seconds=HOUR)).decayed == 0
    assert sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR, dry_run=True)).scanned == 1


def test_expired_lock_is_taken_over():
    write(ago(DAY), body("a"))
    SweepLock.objects.create(tenant="default", owner="crashed", until=T0 - timedelta(seconds=1), acquired_at=ago(DAY))
    assert sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR)).decayed == 1
    assert not SweepLock.objects.exists()


@override_settings(STIGMEM_DECAY_CHUNK=1)
def test_sweep_stops_when_its_lease_was_taken_over():
    write(ago(DAY), body("a"), body("b"))

    def steal(fraction):
        SweepLock.objects.update(owner="thief")

    with pytest.raises(SweepBusy):
        sweep_at(T0, SweepRequest(tenant="default", ttl_seconds=HOUR), progress=steal)
    assert len(expired_ids()) == 1  # the first chunk committed, the second was refused
    assert SweepLock.objects.get().owner == "thief"
