"""Pulling from a peer (WIRE.md §6.5, §6.6): paging, cursors, back-off, tombstones, leases, workers.

The peer is faked with ``responses``; everything on our side runs for real (tokens, ingest, the
write path, the audit log). Tests that run the parallel cycle use a transactional database, so
that the pool threads see the committed rows.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from datetime import timedelta

import pytest
import requests
import responses
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError
from django.utils import timezone
from prometheus_client import REGISTRY

from federation import pull, tasks
from federation.models import Peer, PeerNonce
from stigmem.models import AuditEvent, Fact, NodeClock, Tombstone, TombstoneRevocation
from tests.federation.helpers import make_remote_peer
from tests.federation.pull_helpers import (
    ENTITY,
    audit_rows,
    facts_url,
    no_tombstones,
    peer_revocation,
    peer_tombstone,
    query,
    remote_fact,
    serve_json,
    serve_pages,
    serve_tombstones,
    tombstones_url,
)

INTERVAL = 30


@pytest.fixture(autouse=True)
def federation_on(settings):
    settings.STIGMEM_FEDERATION_PULL_INTERVAL_S = INTERVAL
    settings.STIGMEM_FEDERATION_PULL_BUDGET_S = 20.0
    settings.STIGMEM_FEDERATION_TIMEOUT_S = 2.0


@pytest.fixture
def clock_row():
    # A transactional test starts from emptied tables, the node clock's row included.
    NodeClock.objects.get_or_create(pk=1)


@pytest.fixture
def remote(db):
    """An active peer and its private key."""
    return make_remote_peer(scopes=("company", "public"))


@pytest.fixture
def peer(remote):
    return remote[0]


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def pages_of(*sizes: int) -> list[list[dict]]:
    return [[remote_fact() for _ in range(size)] for size in sizes]


def stored_ids() -> set[str]:
    return {str(i) for i in Fact.objects.values_list("id", flat=True)}


def ids(*pages: list[dict]) -> set[str]:
    return {record["id"] for page in pages for record in page}


def lag_metric(peer: Peer) -> float | None:
    return REGISTRY.get_sample_value("stigmem_federation_replication_lag_seconds", {"peer": peer.node_id})


def seconds_until(moment) -> float:
    return (moment - timezone.now()).total_seconds()


# --- paging and cursors ------------------------------------------------------------------------


def test_a_pull_drains_every_page_and_saves_the_cursor(peer, mock):
    pages = pages_of(3, 3, 2)
    seen: list[dict] = []
    serve_pages(mock, peer, pages, seen=seen)
    no_tombstones(mock, peer)

    result = pull.pull_peer(peer)

    assert (result.outcome, result.pages, result.ingested, result.rejected, result.error) == ("ok", 3, 8, 0, "")
    assert stored_ids() == ids(*pages)
    peer.refresh_from_db()
    assert (peer.fact_cursor, peer.facts_ingested, peer.facts_rejected) == ("p3", 8, 0)
    assert (peer.last_pull_outcome, peer.last_pull_error, peer.consecutive_failures) == ("ok", "", 0)
    assert (peer.pull_lease_owner, peer.pull_lease_until) == ("", None)
    assert INTERVAL - 5 < seconds_until(peer.next_pull_at) <= INTERVAL
    # Each page asked from the previous cursor, with the page limit and a fresh token.
    assert [s["params"].get("cursor") for s in seen] == [None, "p1", "p2"]
    assert {s["params"]["limit"] for s in seen} == {"500"}
    assert len({s["nonce"] for s in seen}) == 3


def test_the_next_pull_starts_from_the_saved_cursor(peer, mock):
    pages = pages_of(2, 2)
    seen: list[dict] = []
    serve_pages(mock, peer, pages, seen=seen)
    no_tombstones(mock, peer)
    pull.pull_peer(peer)
    seen.clear()

    again = pull.pull_peer(peer)

    assert (again.outcome, again.pages, again.ingested, again.duplicates) == ("ok", 1, 0, 0)
    assert [s["params"].get("cursor") for s in seen] == ["p2"]


def test_lag_is_set_from_the_newest_ingested_fact_and_is_zero_when_caught_up(peer, mock):
    older = remote_fact(timestamp=(timezone.now() - timedelta(minutes=10)).isoformat())
    newer = remote_fact(timestamp=(timezone.now() - timedelta(minutes=2)).isoformat())
    serve_pages(mock, peer, [[older, newer]])
    no_tombstones(mock, peer)

    first = pull.pull_peer(peer)

    assert 115 <= first.lag_seconds < 300
    peer.refresh_from_db()
    assert peer.lag_seconds == first.lag_seconds
    assert peer.newest_ingested_at.isoformat() == newer["timestamp"]
    assert lag_metric(peer) == first.lag_seconds

    caught_up = pull.pull_peer(peer)

    assert (caught_up.ingested, caught_up.lag_seconds) == (0, 0.0)
    assert lag_metric(peer) == 0.0
    peer.refresh_from_db()
    assert peer.newest_ingested_at.isoformat() == newer["timestamp"]


def test_a_spent_budget_stops_after_the_page_and_leaves_the_peer_due(peer, mock):
    pages = pages_of(2, 2, 2)
    serve_pages(mock, peer, pages)
    no_tombstones(mock, peer)

    first = pull.pull_peer(peer, budget_s=0)

    assert (first.outcome, first.pages, first.ingested, first.more_pending) == ("ok", 1, 2, True)
    assert stored_ids() == ids(pages[0])
    peer.refresh_from_db()
    assert peer.fact_cursor == "p1"
    assert seconds_until(peer.next_pull_at) <= 0  # due again at once

    rest = [pull.pull_peer(peer, budget_s=0) for _ in range(2)]

    assert [r.more_pending for r in rest] == [True, False]
    assert stored_ids() == ids(*pages)


def test_has_more_without_a_moving_cursor_does_not_loop(peer, mock):
    page = [remote_fact()]
    serve_json(mock, facts_url(peer), {"facts": page, "cursor": None, "has_more": True})
    no_tombstones(mock, peer)

    result = pull.pull_peer(peer)

    assert (result.outcome, result.pages, result.ingested) == ("ok", 1, 1)
    assert len([c for c in mock.calls if c.request.url.startswith(facts_url(peer))]) == 1


def test_a_crash_keeps_the_pages_committed_before_it(peer, mock, monkeypatch):
    pages = pages_of(2, 2)
    serve_pages(mock, peer, pages)
    no_tombstones(mock, peer)
    real = pull.ingest_page
    calls = []

    def crash_on_the_second_page(target, records):
        calls.append(len(records))
        if len(calls) == 2:
            real(target, records)  # the second page's facts are written, then the process "dies"
            raise RuntimeError("simulated crash")
        return real(target, records)

    monkeypatch.setattr(pull, "ingest_page", crash_on_the_second_page)

    result = pull.pull_peer(peer)

    assert (result.outcome, result.pages, result.ingested) == ("error", 1, 2)
    assert "simulated crash" in result.error
    assert stored_ids() == ids(pages[0])
    peer.refresh_from_db()
    assert (peer.fact_cursor, peer.facts_ingested) == ("p1", 2)
    assert peer.consecutive_failures == 1

    # The next pull resumes at the first page not committed.
    monkeypatch.setattr(pull, "ingest_page", real)
    peer.next_pull_at = None
    after = pull.pull_peer(peer)
    assert (after.outcome, after.ingested) == ("ok", 2)
    assert stored_ids() == ids(*pages)


def test_a_transient_store_failure_stops_the_page_without_advancing(peer, mock, monkeypatch):
    pages = pages_of(3)
    serve_pages(mock, peer, pages)
    no_tombstones(mock, peer)

    def database_gone(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr("federation.ingest.assert_facts", database_gone)

    result = pull.pull_peer(peer)

    assert (result.outcome, result.pages, result.ingested) == ("error", 0, 0)
    assert Fact.objects.count() == 0
    peer.refresh_from_db()
    assert (peer.fact_cursor, peer.facts_ingested, peer.consecutive_failures) == (None, 0, 1)
    (failed,) = audit_rows("federation_pull_failed")
    assert "OperationalError" in failed.detail["error"]


def test_rejected_facts_are_counted_and_the_cursor_advances_past_them(peer, mock):
    page = [remote_fact(), remote_fact(scope="local"), remote_fact(cid="sha256:" + "1" * 64)]
    serve_pages(mock, peer, [page])
    no_tombstones(mock, peer)

    result = pull.pull_peer(peer)

    assert (result.outcome, result.ingested, result.rejected) == ("ok", 1, 2)
    peer.refresh_from_db()
    assert (peer.fact_cursor, peer.facts_ingested, peer.facts_rejected) == ("p1", 1, 2)
    assert len(audit_rows("federation_fact_rejected")) == 1
    assert len(audit_rows("federation_integrity_rejected")) == 1


# --- failures and back-off ---------------------------------------------------------------------


def assert_backed_off(peer: Peer, outcome: str, failures: int = 1) -> None:
    peer.refresh_from_db()
    assert (peer.last_pull_outcome, peer.consecutive_failures) == (outcome, failures)
    assert (peer.fact_cursor, peer.pull_lease_owner, peer.pull_lease_until) == (None, "", None)
    expected = INTERVAL * 2**failures
    assert expected * 0.85 < seconds_until(peer.next_pull_at) <= expected * 1.1


def test_a_5xx_backs_off_exponentially_and_is_audited(peer, mock):
    mock.add(responses.GET, facts_url(peer), json={"detail": "boom"}, status=503)

    first = pull.pull_peer(peer)

    assert (first.outcome, first.error) == ("http_error", "GET /v1/federation/facts: HTTP 503: boom")
    assert_backed_off(peer, "http_error", 1)
    (row,) = audit_rows("federation_pull_failed")
    assert (row.actor, row.target, row.detail["outcome"], row.detail["consecutive_failures"]) == (
        peer.node_id,
        peer.peer_id,
        "http_error",
        1,
    )
    assert Fact.objects.count() == 0

    pull.pull_peer(peer)  # pulled now although it is not due: the operator asked
    assert_backed_off(peer, "http_error", 2)


def test_back_off_is_capped_at_an_hour(peer, mock):
    Peer.objects.filter(pk=peer.pk).update(consecutive_failures=30)
    mock.add(responses.GET, facts_url(peer), status=500)

    pull.pull_peer(peer)

    peer.refresh_from_db()
    assert peer.consecutive_failures == 31
    assert 3000 < seconds_until(peer.next_pull_at) <= 3600


def test_a_429_honours_retry_after_and_is_not_audited(peer, mock):
    mock.add(
        responses.GET,
        facts_url(peer),
        json={"detail": "rate limit exceeded"},
        status=429,
        headers={"Retry-After": "120"},
    )

    result = pull.pull_peer(peer)

    assert result.outcome == "rate_limited"
    peer.refresh_from_db()
    assert (peer.last_pull_outcome, peer.consecutive_failures, peer.fact_cursor) == ("rate_limited", 1, None)
    assert 110 < seconds_until(peer.next_pull_at) <= 120
    assert not audit_rows("federation_pull_failed")


@pytest.mark.parametrize(("header", "low", "high"), [(None, 25, 30), ("86400", 3590, 3600), ("soon", 25, 30)])
def test_a_429_without_a_usable_retry_after_waits_an_interval_and_never_more_than_an_hour(
    peer, mock, header, low, high
):
    headers = {"Retry-After": header} if header else {}
    mock.add(responses.GET, facts_url(peer), status=429, headers=headers)

    pull.pull_peer(peer)

    peer.refresh_from_db()
    assert low < seconds_until(peer.next_pull_at) <= high


def test_a_network_error_backs_off(peer, mock):
    mock.add(responses.GET, facts_url(peer), body=requests.ConnectionError("connection refused"))

    result = pull.pull_peer(peer)

    assert result.outcome == "network_error"
    assert "connection refused" in result.error
    assert_backed_off(peer, "network_error")
    assert len(audit_rows("federation_pull_failed", outcome="network_error")) == 1


def test_a_timeout_backs_off(peer, mock):
    mock.add(responses.GET, facts_url(peer), body=requests.ReadTimeout("read timed out"))

    result = pull.pull_peer(peer)

    assert (result.outcome, result.error) == ("network_error", "GET /v1/federation/facts: no answer within 2 s")
    assert_backed_off(peer, "network_error")


MALFORMED = [
    ("not json", b"<html>502 Bad Gateway</html>", "the response is not JSON"),
    ("truncated json", b'{"facts": [', "the response is not JSON"),
    ("a json array", b"[]", "the page is not a JSON object"),
    ("facts not a list", b'{"facts": {}, "cursor": "c", "has_more": false}', "facts is missing or not a list"),
    ("no facts", b'{"cursor": "c", "has_more": false}', "facts is missing or not a list"),
    ("no has_more", b'{"facts": [], "cursor": "c"}', "has_more is missing or not a boolean"),
    ("has_more a string", b'{"facts": [], "cursor": "c", "has_more": "no"}', "has_more is missing or not a boolean"),
    ("cursor a number", b'{"facts": [], "cursor": 7, "has_more": false}', "cursor must be null or a string"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "the response is not JSON"),
]


@pytest.mark.parametrize(("body", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_page_is_audited_backs_off_and_writes_nothing(peer, mock, body, message):
    good = remote_fact()
    # Even a page whose good facts come with the bad structure stores none of them.
    body = body.replace(b'"facts": []', b'"facts": [' + json.dumps(good).encode() + b"]")
    mock.add(responses.GET, facts_url(peer), body=body, status=200, content_type="application/json")

    result = pull.pull_peer(peer)

    assert result.outcome == "malformed_page"
    assert message in result.error
    assert_backed_off(peer, "malformed_page")
    assert Fact.objects.count() == 0
    (row,) = AuditEvent.objects.all()
    assert (row.event_type, row.detail["outcome"]) == ("federation_pull_failed", "malformed_page")
    assert message in row.detail["error"]


def test_an_oversized_page_is_refused(peer, mock, monkeypatch):
    monkeypatch.setattr(pull, "MAX_PAGE_BYTES", 1000)
    mock.add(responses.GET, facts_url(peer), body=b'{"facts": [' + b" " * 5000 + b'], "has_more": false}')

    result = pull.pull_peer(peer)

    assert result.outcome == "malformed_page"
    assert "larger than 1000 bytes" in result.error


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, {"detail": "peer_not_approved"}, "HTTP 401: peer_not_approved"),
        (401, {"detail": "nonce_already_seen"}, "HTTP 401: nonce_already_seen"),
        (403, {"detail": "no permitted scopes"}, "HTTP 403: no permitted scopes"),
        (404, {"detail": "federation is not enabled on this node"}, "HTTP 404: federation is not enabled"),
    ],
)
def test_a_refusal_by_the_peer_is_an_http_error_with_its_detail(peer, mock, status, body, error):
    mock.add(responses.GET, facts_url(peer), json=body, status=status)

    result = pull.pull_peer(peer)

    assert result.outcome == "http_error"
    assert error in result.error
    assert_backed_off(peer, "http_error")
    assert error in audit_rows("federation_pull_failed")[0].detail["error"]


def test_a_redirect_is_not_followed(peer, mock):
    mock.add(responses.GET, facts_url(peer), status=302, headers={"Location": "http://169.254.169.254/latest"})
    elsewhere = mock.add(responses.GET, "http://169.254.169.254/latest", json={"facts": [], "has_more": False})

    result = pull.pull_peer(peer)

    assert (result.outcome, result.error) == ("http_error", "GET /v1/federation/facts: HTTP 302")
    assert elsewhere.call_count == 0


def test_a_peer_url_failing_the_ssrf_guard_is_not_contacted(peer, mock, settings):
    settings.STIGMEM_FEDERATION_ALLOW_PRIVATE = False
    Peer.objects.filter(pk=peer.pk).update(node_url="http://127.0.0.1:8000")

    result = pull.pull_peer(peer)

    assert result.outcome == "error"
    assert "peer URL refused" in result.error
    assert len(mock.calls) == 0
    assert len(audit_rows("federation_pull_failed", outcome="error")) == 1


def test_success_after_failures_resets_the_back_off(peer, mock):
    Peer.objects.filter(pk=peer.pk).update(consecutive_failures=4, last_pull_error="HTTP 503")
    serve_pages(mock, peer, pages_of(1))
    no_tombstones(mock, peer)

    pull.pull_peer(peer)

    peer.refresh_from_db()
    assert (peer.consecutive_failures, peer.last_pull_outcome, peer.last_pull_error) == (0, "ok", "")
    assert INTERVAL - 5 < seconds_until(peer.next_pull_at) <= INTERVAL


# --- leases ------------------------------------------------------------------------------------


def test_a_peer_leased_by_another_worker_is_busy_and_not_contacted(peer, mock):
    until = timezone.now() + timedelta(minutes=1)
    Peer.objects.filter(pk=peer.pk).update(pull_lease_owner="other-worker", pull_lease_until=until)

    result = pull.pull_peer(peer)

    assert result.outcome == "busy"
    assert len(mock.calls) == 0
    peer.refresh_from_db()
    assert (peer.pull_lease_owner, peer.last_pull_outcome) == ("other-worker", "")


def test_an_expired_lease_is_taken_over(peer, mock):
    expired = timezone.now() - timedelta(seconds=1)
    Peer.objects.filter(pk=peer.pk).update(pull_lease_owner="dead-worker", pull_lease_until=expired)
    serve_pages(mock, peer, pages_of(1))
    no_tombstones(mock, peer)

    result = pull.pull_peer(peer, owner="me")

    assert (result.outcome, result.ingested) == ("ok", 1)
    peer.refresh_from_db()
    assert (peer.pull_lease_owner, peer.pull_lease_until) == ("", None)


def test_a_lost_lease_rolls_the_page_back(peer, mock):
    records = [remote_fact()]

    def slow_answer(request):
        # While the request hangs, our lease expires and another worker takes the peer over.
        Peer.objects.filter(pk=peer.pk).update(pull_lease_owner="usurper")
        return 200, {}, json.dumps({"facts": records, "cursor": "p1", "has_more": False})

    mock.add_callback(responses.GET, facts_url(peer), callback=slow_answer)

    result = pull.pull_peer(peer)

    assert result.outcome == "error"
    assert "lease was lost" in result.error
    assert Fact.objects.count() == 0
    peer.refresh_from_db()
    # The new holder's state is left alone.
    assert (peer.pull_lease_owner, peer.fact_cursor, peer.last_pull_outcome) == ("usurper", None, "")


@pytest.mark.parametrize("status", ["pending_approval", "suspended", "revoked", "rejected"])
def test_a_peer_that_is_not_active_is_not_pulled(peer, mock, status):
    Peer.objects.filter(pk=peer.pk).update(status=status)

    result = pull.pull_peer(peer.pk)

    assert result.outcome == "not_active"
    assert len(mock.calls) == 0


def test_reset_cursor_during_a_pull_wins_over_the_running_pull(peer, mock):
    page = [remote_fact(), remote_fact()]

    def answer(request):
        # The operator resets while this pull waits for the page.
        pull.reset_cursor(Peer.objects.get(pk=peer.pk), "stigmem://test/agent/admin")
        return 200, {}, json.dumps({"facts": page, "cursor": "p1", "has_more": False})

    mock.add_callback(responses.GET, facts_url(peer), callback=answer)
    no_tombstones(mock, peer)

    result = pull.pull_peer(peer)

    assert (result.outcome, result.error) == (
        "error",
        "the pull lease was lost (taken over by another worker, or the cursor was reset)",
    )
    peer.refresh_from_db()
    assert peer.fact_cursor is None  # the reset stands
    assert stored_ids() == set()  # the page fetched before the reset was rolled back


def test_reset_cursor_starts_over_and_is_audited(peer, mock):
    Peer.objects.filter(pk=peer.pk).update(fact_cursor="p9", tombstone_cursor="t9")

    pull.reset_cursor(peer, "stigmem://test/agent/admin")

    peer.refresh_from_db()
    assert (peer.fact_cursor, peer.tombstone_cursor) == (None, None)
    (row,) = audit_rows("federation_cursor_reset")
    assert (row.actor, row.target, row.detail["was"]) == (
        "stigmem://test/agent/admin",
        peer.peer_id,
        {"fact_cursor": "p9", "tombstone_cursor": "t9"},
    )


# --- tombstones --------------------------------------------------------------------------------


def visible(client, entity: str = ENTITY) -> list[dict]:
    return client.get("/v1/facts", {"entity": entity}).json()["facts"]


def test_a_valid_tombstone_is_applied_and_hides_the_entity(remote, mock, client):
    peer, key = remote
    serve_pages(mock, peer, [[remote_fact(), remote_fact(entity="stigmem://remote.example/user/other")]])
    tombstone = peer_tombstone(peer, key)
    serve_tombstones(mock, peer, [tombstone])

    result = pull.pull_peer(peer)

    assert (result.outcome, result.ingested, result.tombstones) == ("ok", 2, 1)
    stored = Tombstone.objects.get()
    assert (stored.id, stored.tenant, stored.entity_uri, stored.scope, stored.origin_node_id) == (
        tombstone["id"],
        "default",
        ENTITY,
        "*",
        peer.node_id,
    )
    assert stored.signature == tombstone["signature"]
    assert visible(client) == []
    assert len(visible(client, "stigmem://remote.example/user/other")) == 1
    peer.refresh_from_db()
    assert (peer.tombstone_cursor, peer.tombstones_ingested) == ("t1", 1)
    assert audit_rows("tombstone_created")[0].actor == peer.node_id

    # Pulled again: idempotent by id.
    again = pull.pull_peer(peer)
    assert again.tombstones == 0
    assert Tombstone.objects.count() == 1


def test_a_valid_revocation_lifts_the_peers_tombstone(remote, mock, client):
    peer, key = remote
    serve_pages(mock, peer, [[remote_fact()]])
    tombstone = peer_tombstone(peer, key)
    serve_tombstones(mock, peer, [tombstone], [peer_revocation(peer, key, tombstone)])

    result = pull.pull_peer(peer)

    assert result.tombstones == 2
    assert TombstoneRevocation.objects.get().tombstone_id == tombstone["id"]
    assert len(visible(client)) == 1


def test_a_peer_cannot_revoke_a_tombstone_it_did_not_send(remote, mock, admin_client, client):
    peer, key = remote
    serve_pages(mock, peer, [[remote_fact()]])
    ours = admin_client.post("/v1/tombstones", {"entity_uri": ENTITY, "scope": "*"}, format="json").json()
    forged = peer_revocation(peer, key, {"id": ours["id"]})
    serve_tombstones(mock, peer, [], [forged])

    result = pull.pull_peer(peer)

    assert (result.outcome, result.tombstones) == ("ok", 0)
    assert not TombstoneRevocation.objects.exists()
    (row,) = audit_rows("federation_tombstone_rejected")
    assert row.detail == {"reason": "unknown_tombstone", "kind": "revocation", "id": forged["id"]}
    assert visible(client) == []


FORGED = [
    ("signed by another key", lambda p, k: peer_tombstone(p, Ed25519PrivateKey.generate()), "invalid_signature"),
    ("altered after signing", lambda p, k: {**peer_tombstone(p, k), "scope": "public"}, "invalid_signature"),
    ("no signature", lambda p, k: {**peer_tombstone(p, k), "signature": None}, "invalid_signature"),
    ("signed for another node", lambda p, k: peer_tombstone(p, k, signed_by="stigmem:node:x"), "not_signed_by_peer"),
    ("a local-scope tombstone", lambda p, k: peer_tombstone(p, k, scope="local"), "scope_not_agreed"),
    ("a scope outside the agreement", lambda p, k: peer_tombstone(p, k, scope="team"), "scope_not_agreed"),
    ("not an object", lambda p, k: "tomb_x", "not_an_object"),
    (
        "an entity not in normalized form",
        lambda p, k: peer_tombstone(p, k, entity="stigmem://Remote.Example/user/u1"),
        "entity_not_normalized",
    ),
    ("a bad creation time", lambda p, k: peer_tombstone(p, k, created_at="a while ago"), "malformed"),
]


@pytest.mark.parametrize(("make", "reason"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_a_forged_or_unusable_tombstone_is_rejected_and_audited(remote, mock, client, make, reason):
    peer, key = remote
    serve_pages(mock, peer, [[remote_fact()]])
    bad = make(peer, key)
    good = peer_tombstone(peer, key, entity="stigmem://remote.example/user/gone")
    serve_tombstones(mock, peer, [bad, good])

    result = pull.pull_peer(peer)

    assert (result.outcome, result.tombstones) == ("ok", 1)
    assert list(Tombstone.objects.values_list("id", flat=True)) == [good["id"]]
    (row,) = audit_rows("federation_tombstone_rejected")
    assert (row.actor, row.target, row.detail["reason"], row.detail["kind"]) == (
        peer.node_id,
        peer.peer_id,
        reason,
        "tombstone",
    )
    assert len(visible(client)) == 1
    peer.refresh_from_db()
    assert peer.tombstone_cursor == "t1"  # the bad one is skipped, not retried forever


def test_a_404_for_tombstones_means_unsupported_and_is_not_an_error(peer, mock):
    serve_pages(mock, peer, [[remote_fact()]])
    no_tombstones(mock, peer)

    result = pull.pull_peer(peer)

    assert (result.outcome, result.error, result.tombstones) == ("ok", "", 0)
    assert not audit_rows("federation_pull_failed")


def test_a_malformed_tombstone_page_is_a_failure_after_the_facts_are_kept(peer, mock):
    serve_pages(mock, peer, [[remote_fact()]])
    serve_json(mock, tombstones_url(peer), {"tombstones": "all of them", "has_more": False})

    result = pull.pull_peer(peer)

    assert (result.outcome, result.ingested) == ("malformed_page", 1)
    peer.refresh_from_db()
    assert (peer.fact_cursor, peer.tombstone_cursor) == ("p1", None)
    assert len(audit_rows("federation_pull_failed", outcome="malformed_page")) == 1


def test_tombstones_page_through_their_cursor(remote, mock):
    peer, key = remote
    serve_pages(mock, peer, [[]])
    first = [peer_tombstone(peer, key, entity=f"stigmem://remote.example/user/t{n}") for n in range(2)]
    second = [peer_tombstone(peer, key, entity="stigmem://remote.example/user/t9")]

    def answer(request):
        cursor = query(request).get("cursor")
        if cursor is None:
            return 200, {}, json.dumps({"tombstones": first, "revocations": [], "cursor": "a", "has_more": True})
        return 200, {}, json.dumps({"tombstones": second, "revocations": [], "cursor": "b", "has_more": False})

    mock.add_callback(responses.GET, tombstones_url(peer), callback=answer)

    result = pull.pull_peer(peer)

    assert result.tombstones == 3
    peer.refresh_from_db()
    assert (peer.tombstone_cursor, peer.tombstones_ingested) == ("b", 3)


# --- many peers, the task and the command --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_only_due_peers_are_pulled_unless_forced(mock, clock_row):
    due, _ = make_remote_peer()
    never, _ = make_remote_peer()
    later, _ = make_remote_peer()
    Peer.objects.filter(pk=later.pk).update(next_pull_at=timezone.now() + timedelta(minutes=5))
    Peer.objects.filter(pk=due.pk).update(next_pull_at=timezone.now() - timedelta(seconds=1))
    for peer in (due, never, later):
        serve_pages(mock, peer, pages_of(1))
        no_tombstones(mock, peer)

    results = pull.pull_due_peers()

    assert {r.node_id for r in results} == {due.node_id, never.node_id}
    assert all(r.outcome == "ok" for r in results)

    forced = pull.pull_due_peers(force=True)

    assert {r.node_id for r in forced} == {due.node_id, never.node_id, later.node_id}
    assert Fact.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_the_scheduled_task_keeps_pulling_a_backlog_then_returns(mock, settings, monkeypatch, clock_row):
    settings.STIGMEM_FEDERATION_PULL_BUDGET_S = 0  # one page per pull
    settings.STIGMEM_FEDERATION_PULL_INTERVAL_S = 60  # once drained, not due again within the run
    monkeypatch.setattr(tasks, "MIN_PAUSE_S", 0.0)
    peer, _ = make_remote_peer()
    pages = pages_of(2, 2, 2)
    serve_pages(mock, peer, pages)
    no_tombstones(mock, peer)

    pulls = tasks.pull_due_peers()

    assert pulls == 3
    assert stored_ids() == ids(*pages)


@pytest.mark.django_db(transaction=True)
def test_the_scheduled_task_honours_an_interval_shorter_than_its_schedule(mock, settings, monkeypatch, clock_row):
    settings.STIGMEM_FEDERATION_PULL_INTERVAL_S = 1
    monkeypatch.setattr(tasks, "RUN_WINDOW_S", 2.5)
    peer, _ = make_remote_peer()
    seen: list[dict] = []
    serve_pages(mock, peer, pages_of(1), seen=seen)
    no_tombstones(mock, peer)

    pulls = tasks.pull_due_peers()

    # The schedule fires once a minute; within the run the peer is pulled again each interval.
    assert pulls >= 2
    assert len(seen) == pulls
    assert [s["params"].get("cursor") for s in seen[:2]] == [None, "p1"]


@pytest.mark.django_db(transaction=True)
def test_the_tasks_do_nothing_while_federation_is_disabled(mock, settings):
    settings.STIGMEM_FEDERATION_ENABLED = False
    make_remote_peer()
    PeerNonce.objects.create(issuer="x", nonce="n", expires_at=timezone.now() - timedelta(hours=1))

    assert tasks.pull_due_peers() == 0
    assert tasks.prune_nonces() == 0
    assert len(mock.calls) == 0
    assert PeerNonce.objects.count() == 1


def test_the_nonce_task_prunes_expired_nonces(db):
    PeerNonce.objects.create(issuer="x", nonce="old", expires_at=timezone.now() - timedelta(hours=1))
    PeerNonce.objects.create(issuer="x", nonce="new", expires_at=timezone.now() + timedelta(hours=1))

    assert tasks.prune_nonces() == 1
    assert list(PeerNonce.objects.values_list("nonce", flat=True)) == ["new"]


def test_the_command_pulls_one_peer_and_prints_a_summary(peer, mock, capsys):
    Peer.objects.filter(pk=peer.pk).update(next_pull_at=timezone.now() + timedelta(hours=1))
    serve_pages(mock, peer, pages_of(2))
    no_tombstones(mock, peer)

    call_command("pull_peers", "--peer", peer.peer_id)

    out = capsys.readouterr().out
    assert out.startswith(f"{peer.node_id}: ok, pages=1 ingested=2 duplicates=0 rejected=0 tombstones=0 lag=")
    assert Fact.objects.count() == 2


def test_the_command_finds_a_peer_by_node_id_too(peer, mock, capsys):
    serve_pages(mock, peer, pages_of(1))
    no_tombstones(mock, peer)

    call_command("pull_peers", "--peer", peer.node_id)

    assert f"{peer.node_id}: ok" in capsys.readouterr().out


def test_the_command_fails_with_status_1_when_a_pull_failed(peer, mock, capsys):
    mock.add(responses.GET, facts_url(peer), status=502)

    with pytest.raises(CommandError) as failure:
        call_command("pull_peers", "--peer", peer.peer_id)

    assert failure.value.returncode == 1
    assert "http_error" in capsys.readouterr().out


@pytest.mark.parametrize("ref", ["stigmem:node:nobody", str(uuid.uuid4()), "not-a-uuid"])
def test_the_command_refuses_an_unknown_peer(peer, mock, ref):
    with pytest.raises(CommandError, match="no peer"):
        call_command("pull_peers", "--peer", ref)
    assert len(mock.calls) == 0


def test_the_command_refuses_to_run_while_federation_is_disabled(peer, mock, settings):
    settings.STIGMEM_FEDERATION_ENABLED = False
    with pytest.raises(CommandError, match="not enabled"):
        call_command("pull_peers")
    assert len(mock.calls) == 0


def test_the_command_loop_stops_cleanly_on_sigterm(peer, mock, capsys):
    def answer(request):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the first cycle runs
        return 200, {}, '{"facts": [], "cursor": null, "has_more": false}'

    mock.add_callback(responses.GET, facts_url(peer), callback=answer)
    no_tombstones(mock, peer)
    before = signal.getsignal(signal.SIGTERM)

    call_command("pull_peers", "--peer", peer.peer_id, "--loop")

    assert capsys.readouterr().out.count(f"{peer.node_id}: ok") == 1
    assert signal.getsignal(signal.SIGTERM) == before
