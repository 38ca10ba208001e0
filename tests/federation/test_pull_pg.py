"""Several pull workers on PostgreSQL (issue 5, item 6): one worker pulls a peer at a time.

Real threads, each with its own database connection, call ``pull_peer`` on the same peer at the
same moment: the lease lets exactly one of them pull, every fact is ingested once and the cursor
is the last page's. Two different peers, on the other hand, are pulled side by side.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import responses
from django.db import connection, connections

from federation import pull
from federation.models import Peer
from stigmem.models import AuditEvent, Fact, NodeClock
from tests.federation.helpers import make_remote_peer
from tests.federation.pull_helpers import facts_url, no_tombstones, query, remote_fact

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 6


@pytest.fixture(autouse=True)
def federation_on(settings):
    settings.STIGMEM_FEDERATION_PULL_CONCURRENCY = 4
    NodeClock.objects.get_or_create(pk=1)


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def test_concurrent_pulls_of_one_peer_pull_it_once(mock):
    assert connection.vendor == "postgresql"
    peer, _ = make_remote_peer()
    pages = [[remote_fact(entity=f"stigmem://remote.example/user/p{p}n{n}") for n in range(50)] for p in range(4)]
    requested: list[str | None] = []

    def slow_pages(request):
        # Slow enough that every worker tries to claim the peer while the first one pulls.
        time.sleep(0.2)
        cursor = query(request).get("cursor")
        requested.append(cursor)
        index = 0 if cursor is None else int(cursor[1:])
        body = {"facts": pages[index], "cursor": f"p{index + 1}", "has_more": index + 1 < len(pages)}
        return 200, {}, json.dumps(body)

    mock.add_callback(responses.GET, facts_url(peer), callback=slow_pages)
    no_tombstones(mock, peer)
    start = threading.Barrier(WORKERS)
    results: list[pull.PullResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(timeout=30)
            results.append(pull.pull_peer(peer.peer_id))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    outcomes = sorted(result.outcome for result in results)
    assert outcomes == ["busy"] * (WORKERS - 1) + ["ok"]
    (done,) = [result for result in results if result.outcome == "ok"]
    assert (done.pages, done.ingested, done.duplicates) == (4, 200, 0)
    assert requested == [None, "p1", "p2", "p3"]
    expected = {record["id"] for page in pages for record in page}
    assert {str(i) for i in Fact.objects.values_list("id", flat=True)} == expected
    peer.refresh_from_db()
    assert (peer.fact_cursor, peer.facts_ingested, peer.last_pull_outcome) == ("p4", 200, "ok")
    assert (peer.pull_lease_owner, peer.pull_lease_until) == ("", None)
    writes = AuditEvent.objects.filter(event_type="fact_write")
    assert sum(row.detail["created"] for row in writes) == 200


def test_two_peers_are_pulled_side_by_side(mock):
    peers = [make_remote_peer()[0] for _ in range(2)]
    in_flight = {"now": 0, "most": 0}
    lock = threading.Lock()
    expected: dict[str, set[str]] = {}

    for peer in peers:
        pages = [
            [remote_fact(entity=f"stigmem://remote.example/user/{peer.pk}{p}{n}") for n in range(25)] for p in range(3)
        ]
        expected[peer.node_id] = {record["id"] for page in pages for record in page}

        def answer(request, pages=pages):
            with lock:
                in_flight["now"] += 1
                in_flight["most"] = max(in_flight["most"], in_flight["now"])
            time.sleep(0.3)
            with lock:
                in_flight["now"] -= 1
            cursor = query(request).get("cursor")
            index = 0 if cursor is None else int(cursor[1:])
            body = {"facts": pages[index], "cursor": f"p{index + 1}", "has_more": index + 1 < len(pages)}
            return 200, {}, json.dumps(body)

        mock.add_callback(responses.GET, facts_url(peer), callback=answer)
        no_tombstones(mock, peer)

    results = pull.pull_due_peers(force=True)

    assert sorted(r.outcome for r in results) == ["ok", "ok"]
    for peer in peers:
        stored = Fact.objects.filter(received_from=peer.node_id).values_list("id", flat=True)
        assert {str(i) for i in stored} == expected[peer.node_id]
        assert Peer.objects.get(pk=peer.pk).fact_cursor == "p3"
    # Both peers' requests were in flight at the same time at least once.
    assert in_flight["most"] == 2
