"""Ingest of pulled fact records (WIRE.md §6.5) through ``federation.ingest.ingest_page``.

Each rule: the accepted record is stored through the one write path with the peer's id,
timestamp and origin; each rejected one gives exactly one audit row and writes nothing else.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from federation import ingest
from federation.ingest import ingest_page
from stigmem import logtail
from stigmem.clock import now_ms
from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts
from stigmem.hlc import Hlc
from stigmem.models import AuditEvent, Conflict, Fact, FactHead, NodeClock
from subscriptions import dispatch
from subscriptions.models import Delivery, Subscription
from tests.federation.helpers import make_remote_peer
from tests.federation.pull_helpers import ENTITY, SOURCE, ago, audit_rows, audit_types, cid_of, hlc_at, remote_fact


@pytest.fixture
def peer(db):
    created, _ = make_remote_peer(scopes=("company", "public"))
    return created


# --- accepted ----------------------------------------------------------------------------------


def test_a_good_record_is_stored_with_the_peers_id_timestamp_and_origin(peer):
    record = remote_fact(timestamp="2026-01-02T03:04:05.123456+00:00", hlc=hlc_at(ago(minutes=5)))

    result = ingest_page(peer, [record])

    assert (result.ingested, result.duplicates, result.rejected) == (1, 0, 0)
    fact = Fact.objects.get()
    assert str(fact.id) == record["id"]
    assert fact.timestamp.isoformat() == "2026-01-02T03:04:05.123456+00:00"
    assert result.newest_timestamp == fact.timestamp
    assert fact.cid == record["cid"]
    assert (fact.tenant, fact.entity, fact.source, fact.scope) == ("default", ENTITY, SOURCE, "company")
    assert fact.received_from == peer.node_id
    assert fact.origin_node_id == peer.node_id
    assert fact.origin_allowed_scopes == ["company", "public"]
    # The one write path audits the write, with the federation origin and the peer as actor.
    write = AuditEvent.objects.get()
    assert (write.event_type, write.actor, write.detail["origin"], write.detail["created"]) == (
        "fact_write",
        peer.node_id,
        "federation",
        1,
    )


def test_the_records_origin_fields_are_kept_when_it_names_them(peer):
    record = remote_fact(origin_node_id="stigmem:node:far-away", origin_allowed_scopes=["public", "company"])

    ingest_page(peer, [record])

    fact = Fact.objects.get()
    assert (fact.received_from, fact.origin_node_id, fact.origin_allowed_scopes) == (
        peer.node_id,
        "stigmem:node:far-away",
        ["company", "public"],
    )


def test_a_naive_timestamp_is_taken_as_utc(peer):
    ingest_page(peer, [remote_fact(timestamp="2026-01-02T03:04:05")])

    assert Fact.objects.get().timestamp.isoformat() == "2026-01-02T03:04:05+00:00"


def test_a_record_without_a_cid_is_accepted_and_gets_ours(peer):
    record = remote_fact()
    expected = record.pop("cid")

    ingest_page(peer, [record])

    assert Fact.objects.get().cid == expected


def test_a_known_id_is_a_no_op(peer):
    record = remote_fact()
    ingest_page(peer, [record])
    before = (list(Fact.objects.values_list("id", "seq", "hlc")), AuditEvent.objects.count())
    clock = NodeClock.objects.get()

    # The same id again, even with other content, changes nothing and is not even validated.
    again = ingest_page(peer, [record, {**record, "value": {"type": "number", "v": "not a number"}}])

    assert (again.ingested, again.duplicates, again.rejected) == (0, 2, 0)
    assert (list(Fact.objects.values_list("id", "seq", "hlc")), AuditEvent.objects.count()) == before
    assert NodeClock.objects.get().last_fact_seq == clock.last_fact_seq


def test_known_content_under_a_new_id_is_a_duplicate(peer):
    record = remote_fact()
    ingest_page(peer, [record])

    again = ingest_page(peer, [{**record, "id": str(uuid.uuid4())}])

    assert (again.ingested, again.duplicates, again.rejected) == (0, 1, 0)
    assert Fact.objects.count() == 1


@pytest.mark.parametrize(
    ("served_v", "hashed", "stored"),
    [
        (1.0, "1", "1"),  # the reference: hashes the integer, serves a float
        (1, "1.0", "1.0"),  # the other way round
        (42, "42", "42"),
        (42.0, "42.0", "42.0"),
        (-7.0, "-7", "-7"),
    ],
)
def test_an_integral_number_matches_a_cid_over_either_spelling(peer, client, served_v, hashed, stored):
    value = {"type": "number", "v": served_v, "interpret_as": "content"}
    record = remote_fact(value=value)
    record["cid"] = cid_of({**record}, hashed)

    result = ingest_page(peer, [record])

    assert (result.ingested, result.rejected) == (1, 0)
    fact = Fact.objects.get()
    # Stored with the spelling that matched, so the CID here equals the peer's.
    assert (fact.value_v, fact.cid) == (stored, record["cid"])
    read = client.get(f"/v1/facts/{fact.id}").json()
    assert str(read["value"]["v"]) == stored
    assert client.post(f"/v1/facts/{fact.id}/verify-cid").json()["cid_valid"] is True


def test_old_history_is_accepted_and_audited_once_per_page_as_an_anomaly(peer):
    old = [remote_fact(hlc=hlc_at(ago(days=45), n), timestamp=ago(days=45).isoformat()) for n in range(3)]
    recent = remote_fact()

    result = ingest_page(peer, [*old, recent])

    assert (result.ingested, result.rejected) == (4, 0)
    assert Fact.objects.count() == 4
    (anomaly,) = audit_rows("federation_hlc_anomaly")
    assert (anomaly.actor, anomaly.target, anomaly.tenant) == (peer.node_id, peer.peer_id, "default")
    assert anomaly.detail["count"] == 3
    assert sorted(anomaly.detail["fact_ids"]) == sorted(r["id"] for r in old)
    assert anomaly.detail["oldest_hlc"] == old[0]["hlc"]
    assert sorted(audit_types()) == ["fact_write", "federation_hlc_anomaly"]


def test_a_remote_hlc_ahead_of_ours_moves_the_node_clock_past_it(peer, client):
    ahead = now_ms() + 120_000  # two minutes ahead: inside the allowed skew
    record = remote_fact(hlc=f"{ahead}.7")

    ingest_page(peer, [record])

    fact = Fact.objects.get()
    assert Hlc.parse(fact.hlc) > Hlc(ahead, 7)
    clock = NodeClock.objects.get()
    assert Hlc(clock.hlc_wall_ms, clock.hlc_counter) >= Hlc.parse(fact.hlc)
    # The next local write is stamped after the remote fact.
    local = client.post(
        "/v1/facts",
        {"entity": ENTITY, "relation": "memory:local", "value": {"type": "string", "v": "x"}, "source": SOURCE},
        format="json",
    ).json()
    assert Hlc.parse(local["hlc"]) > Hlc.parse(fact.hlc)


def test_heads_and_conflicts_follow_the_rules_of_local_writes(peer, client):
    key = {"entity": ENTITY, "relation": "memory:role", "scope": "company"}
    local = assert_facts(
        "default",
        [parse_fact_body({**key, "value": {"type": "string", "v": "admin"}, "source": "stigmem://here/agent/a"})],
    )[0].fact

    # Another source disagrees: a conflict, and the remote fact becomes the current value.
    disputing = remote_fact(**key, value={"type": "string", "v": "guest", "interpret_as": "content"})
    ingest_page(peer, [disputing])

    conflict = Conflict.objects.get()
    assert {conflict.fact_a_id, conflict.fact_b_id} == {local.id, uuid.UUID(disputing["id"])}
    head = FactHead.objects.get(entity=ENTITY, relation="memory:role", scope="company")
    assert str(head.fact_id) == disputing["id"]
    listed = client.get("/v1/conflicts").json()["conflicts"]
    assert len(listed) == 1

    # The same remote source changing its value supersedes silently.
    update = remote_fact(**key, value={"type": "string", "v": "owner", "interpret_as": "content"})
    ingest_page(peer, [update])
    assert Conflict.objects.count() == 1
    head.refresh_from_db()
    assert str(head.fact_id) == update["id"]

    # A retraction from the peer leaves the key without a current value.
    ingest_page(peer, [remote_fact(**key, confidence=0.0)])
    assert not FactHead.objects.filter(entity=ENTITY, relation="memory:role", scope="company").exists()


def test_a_federated_fact_is_delivered_to_a_matching_local_subscription(peer):
    dispatch.clear_cache()
    subscription = Subscription.objects.create(
        tenant="default",
        subscriber_identity="stigmem://test/agent/alice",
        target=ENTITY,
        target_kind=Subscription.Kind.ENTITY,
        match_key=ENTITY,
        on_change=Subscription.OnChange.WEBHOOK,
        delivery_address="https://hooks.example.com/in",
        created_at=timezone.now() - timedelta(minutes=1),
        signing_secret="whsec_dGVzdA==",
    )
    record = remote_fact()

    ingest_page(peer, [record])
    logtail.run_consumers()

    delivery = Delivery.objects.get(subscription=subscription)
    assert (delivery.event_type, str(delivery.fact_id)) == ("fact_asserted", record["id"])
    dispatch.clear_cache()


def test_good_records_are_stored_in_one_write_and_bad_ones_skipped(peer):
    good = [remote_fact() for _ in range(3)]
    bad = remote_fact(scope="team")

    result = ingest_page(peer, [good[0], bad, good[1], good[2]])

    assert (result.ingested, result.rejected, result.reasons) == (3, 1, {"scope_not_agreed": 1})
    assert sorted(str(i) for i in Fact.objects.values_list("id", flat=True)) == sorted(r["id"] for r in good)
    writes = audit_rows("fact_write")
    assert len(writes) == 1 and writes[0].detail["created"] == 3


# --- rejected ----------------------------------------------------------------------------------


def _future_hlc() -> str:
    return f"{now_ms() + 3_600_000}.0"


def _bad_cid(record):
    return {**record, "cid": "sha256:" + "0" * 64}


ID = object()  # stands for the id of the record under test

REJECTIONS = [
    # (case, make the record from a good one, event type, reason, the fact_id audited: ID is the record's)
    ("not an object", lambda r: ["not", "a", "fact"], "federation_fact_rejected", "not_an_object", None),
    ("a string", lambda r: "fact", "federation_fact_rejected", "not_an_object", None),
    ("missing id", lambda r: {k: v for k, v in r.items() if k != "id"}, "federation_fact_rejected", "missing_id", None),
    ("non-uuid id", lambda r: {**r, "id": "fact-1"}, "federation_fact_rejected", "invalid_id", "fact-1"),
    ("numeric id", lambda r: {**r, "id": 12}, "federation_fact_rejected", "invalid_id", 12),
    ("bad timestamp", lambda r: {**r, "timestamp": "yesterday"}, "federation_fact_rejected", "invalid_timestamp", ID),
    ("no timestamp", lambda r: {**r, "timestamp": None}, "federation_fact_rejected", "invalid_timestamp", ID),
    ("bad hlc", lambda r: {**r, "hlc": "soon"}, "federation_fact_rejected", "invalid_hlc", ID),
    ("numeric hlc", lambda r: {**r, "hlc": 17}, "federation_fact_rejected", "invalid_hlc", ID),
    (
        "bad value",
        lambda r: {**r, "value": {"type": "number", "v": "twelve"}},
        "federation_fact_rejected",
        "malformed",
        ID,
    ),
    ("bad value type", lambda r: {**r, "value": {"type": "blob"}}, "federation_fact_rejected", "malformed", ID),
    ("empty entity", lambda r: {**r, "entity": ""}, "federation_fact_rejected", "malformed", ID),
    ("bad confidence", lambda r: {**r, "confidence": 7}, "federation_fact_rejected", "malformed", ID),
    ("unknown scope", lambda r: {**r, "scope": "galaxy"}, "federation_fact_rejected", "malformed", ID),
    ("bad origin", lambda r: {**r, "origin_node_id": 5}, "federation_fact_rejected", "malformed", ID),
    (
        "bad origin scopes",
        lambda r: {**r, "origin_allowed_scopes": ["everywhere"]},
        "federation_fact_rejected",
        "malformed",
        ID,
    ),
    (
        "garden fact",
        lambda r: {**r, "garden_id": "stigmem://remote.example/garden/secret"},
        "federation_fact_rejected",
        "garden_fact",
        ID,
    ),
    (
        "instruction",
        lambda r: {**r, "value": {**r["value"], "interpret_as": "instruction"}},
        "federation_fact_rejected",
        "instruction",
        ID,
    ),
    ("local scope", lambda r: {**r, "scope": "local"}, "federation_fact_rejected", "local_scope", ID),
    (
        "scope outside the agreement",
        lambda r: {**r, "scope": "team"},
        "federation_fact_rejected",
        "scope_not_agreed",
        ID,
    ),
    ("far-future hlc", lambda r: {**r, "hlc": _future_hlc()}, "federation_fact_rejected", "hlc_future_skew", ID),
    ("bad cid", _bad_cid, "federation_integrity_rejected", "cid_mismatch", ID),
    ("malformed cid", lambda r: {**r, "cid": "md5:abc"}, "federation_integrity_rejected", "cid_mismatch", ID),
    (
        "cid of other content",
        lambda r: {**r, "value": {"type": "string", "v": "tampered", "interpret_as": "content"}},
        "federation_integrity_rejected",
        "cid_mismatch",
        ID,
    ),
    (
        "non-integral number spelled as an integer",
        lambda r: {**r, "value": {"type": "number", "v": 1.5}, "cid": cid_of({**r, "value": {"type": "number"}}, "1")},
        "federation_integrity_rejected",
        "cid_mismatch",
        ID,
    ),
]


@pytest.mark.parametrize(
    ("make", "event_type", "reason", "audited_id"),
    [case[1:] for case in REJECTIONS],
    ids=[case[0] for case in REJECTIONS],
)
def test_a_bad_record_is_audited_once_and_nothing_else_is_written(peer, make, event_type, reason, audited_id):
    good = remote_fact()
    record = make(good)
    clock = NodeClock.objects.get()

    result = ingest_page(peer, [record])

    assert (result.ingested, result.duplicates, result.rejected, result.reasons) == (0, 0, 1, {reason: 1})
    assert result.newest_timestamp is None
    (row,) = AuditEvent.objects.all()
    assert (row.event_type, row.tenant, row.actor, row.target) == (event_type, "default", peer.node_id, peer.peer_id)
    assert row.detail["reason"] == reason
    assert row.detail["fact_id"] == (good["id"] if audited_id is ID else audited_id)
    assert Fact.objects.count() == 0
    assert FactHead.objects.count() == 0
    clock_now = NodeClock.objects.get()
    assert (clock_now.last_fact_seq, clock_now.hlc_wall_ms) == (clock.last_fact_seq, clock.hlc_wall_ms)


def test_the_integrity_rejection_names_both_cids(peer):
    record = _bad_cid(remote_fact())
    computed = remote_fact(**{k: record[k] for k in ("entity", "relation", "value", "source", "scope", "confidence")})[
        "cid"
    ]

    ingest_page(peer, [record])

    (row,) = audit_rows("federation_integrity_rejected")
    assert row.detail["stored_cid"] == "sha256:" + "0" * 64
    assert row.detail["computed_cid"] == computed


def test_hostile_text_in_a_rejected_record_is_stored_safely_in_the_audit_row(peer):
    record = {**remote_fact(), "id": "\x00" + "x" * 5000 + "\ud800"}

    result = ingest_page(peer, [record])

    assert result.rejected == 1
    (row,) = audit_rows("federation_fact_rejected")
    assert row.detail["reason"] == "invalid_id"
    assert "\x00" not in row.detail["fact_id"]
    assert len(row.detail["fact_id"]) <= 220


def test_a_malformed_record_reports_where_without_echoing_it(peer):
    ingest_page(peer, [{**remote_fact(), "value": {"type": "number", "v": "twelve"}}])

    (row,) = audit_rows("federation_fact_rejected")
    assert row.detail["errors"] == [{"loc": ["fact", "value", "v"], "type": "number_type"}]


def test_every_bad_record_of_a_page_is_audited_and_the_good_ones_stored(peer):
    good = [remote_fact() for _ in range(2)]
    page = [good[0], *(make(remote_fact()) for _, make, *_ in REJECTIONS), good[1]]

    result = ingest_page(peer, page)

    assert (result.ingested, result.rejected) == (2, len(REJECTIONS))
    assert sorted(str(i) for i in Fact.objects.values_list("id", flat=True)) == sorted(r["id"] for r in good)
    rejected = audit_rows("federation_fact_rejected") + audit_rows("federation_integrity_rejected")
    assert len(rejected) == len(REJECTIONS)
    assert sorted(audit_types()) == sorted(["fact_write"] + [event for _, _, event, _, _ in REJECTIONS])


def test_a_record_that_trips_over_a_bug_is_rejected_not_raised(peer, monkeypatch):
    real = ingest.parse_fact_body
    poisoned = remote_fact()

    def fragile(body, loc):
        if body["id"] == poisoned["id"]:
            raise TypeError("unexpected")
        return real(body, loc)

    monkeypatch.setattr(ingest, "parse_fact_body", fragile)
    good = remote_fact()

    result = ingest_page(peer, [poisoned, good])

    assert (result.ingested, result.rejected, result.reasons) == (1, 1, {"unprocessable": 1})
    assert [str(i) for i in Fact.objects.values_list("id", flat=True)] == [good["id"]]
    (row,) = audit_rows("federation_fact_rejected")
    assert (row.detail["reason"], row.detail["fact_id"]) == ("unprocessable", poisoned["id"])
