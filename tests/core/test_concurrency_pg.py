"""The fact log under concurrent writers, on PostgreSQL (DESIGN.md §3, WIRE.md §2.6-2.7).

Real threads, each with its own database connection, write through ``assert_facts`` (single
asserts and batches, some contending on one key, some re-asserting stored content) while a
reader pages the log. What must hold however the transactions interleave:

- a consumer paging the log by ``seq`` sees every fact exactly once, in strictly increasing
  ``seq``, and ``seq`` is 1..N without gaps;
- ``GET /v1/facts`` paged with its cursor (newest first) sees every fact that existed when paging
  began exactly once;
- HLC values increase strictly with ``seq``.

The SQLite counterpart of the log check is ``test_concurrency_sqlite.py``.
"""

from __future__ import annotations

import threading

import pytest
from rest_framework.test import APIClient

from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts
from stigmem.keys import issue_key
from stigmem.models import Fact, NodeClock
from tests.core import fact_log_workload as workload

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PAGE = 25


@pytest.fixture
def node_clock(transactional_db, settings):
    # A transactional test empties every table when it ends, the migration's clock row included.
    NodeClock.objects.get_or_create(pk=1)
    settings.STIGMEM_RATE_LIMIT_READ_PER_S = 1e9
    settings.STIGMEM_RATE_LIMIT_READ_BURST = 1e9
    return NodeClock.objects.get(pk=1)


def test_log_reader_sees_every_fact_once_in_seq_order(node_clock):
    counts = workload.run_log_workload()

    assert counts["first_seq"] == 1
    assert counts["rows"] == workload.expected_new_facts()
    assert list(Fact.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, counts["rows"] + 1))


def _page_through(client: APIClient) -> tuple[set[str], list[str]]:
    """One pass over GET /v1/facts: the ids that existed at the start, and the ids seen, in order."""
    existing = {str(fact_id) for fact_id in Fact.objects.values_list("id", flat=True)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"include_contradicted": "true", "limit": PAGE}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/v1/facts", params)
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["total"] == len(body["facts"]) <= PAGE
        seen += [record["id"] for record in body["facts"]]
        cursor = body["cursor"]
        if cursor is None:
            return existing, seen


def test_api_cursor_paging_during_writes_skips_and_repeats_nothing(node_clock):
    # Facts that exist before the writers start, so the first pass already spans many pages.
    seed = [
        {
            "entity": f"stigmem://testnode/user/seed{index % 13}",
            "relation": f"memory:s{index}",
            "value": {"type": "number", "v": index},
            "source": "stigmem://testnode/agent/seeder",
        }
        for index in range(300)
    ]
    assert_facts("default", [parse_fact_body(body) for body in seed])
    raw_key = issue_key(tenant="default", entity_uri="stigmem://testnode/agent/pager", permissions=["read"]).raw_key

    threads = workload.Threads()
    go = threading.Barrier(workload.WRITERS + 1, timeout=workload.JOIN_TIMEOUT_S)
    writers_done = workload.start_writers(threads, go)
    passes: list[tuple[set[str], list[str], bool]] = []

    def page_repeatedly() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        go.wait()
        while True:
            finished = all(done.is_set() for done in writers_done)
            existing, seen = _page_through(client)
            passes.append((existing, seen, finished))
            if finished:
                return

    threads.start(page_repeatedly)
    threads.join()

    seq_of = {str(fact_id): seq for fact_id, seq in Fact.objects.values_list("id", "seq")}
    assert len(seq_of) == len(seed) + workload.expected_new_facts()
    assert passes and passes[-1][2], "the last pass must start after the writers finished"
    for number, (existing, seen, _) in enumerate(passes):
        assert len(seen) == len(set(seen)), f"pass {number}: a fact was returned twice"
        assert existing <= set(seen), f"pass {number}: skipped {len(existing - set(seen))} fact(s)"
        seqs = [seq_of[fact_id] for fact_id in seen]
        assert seqs == sorted(seqs, reverse=True), f"pass {number}: not newest first"
    # After the writers, one pass sees exactly the whole table.
    assert set(passes[-1][1]) == set(seq_of)
    workload.check_hlc_follows_seq()
