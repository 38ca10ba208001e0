"""POST /v1/facts/batch (WIRE.md §2.7)."""

from __future__ import annotations

import pytest

from stigmem.models import Conflict, Event, Fact, FactHead, NodeClock
from stigmem.normalize import INFORMAL_WARNING

ENTITY = "stigmem://testnode/user/alice"
S1 = "stigmem://testnode/agent/one"
S2 = "stigmem://testnode/agent/two"


def fact(v="x", *, relation="memory:role", source=S1, **extra):
    return {
        "entity": ENTITY,
        "relation": relation,
        "value": {"type": "string", "v": v},
        "source": source,
        **extra,
    }


def batch(client, facts, **extra):
    return client.post("/v1/facts/batch", {"facts": facts, **extra}, format="json")


def snapshot():
    clock = NodeClock.objects.get(pk=1)
    return {
        "facts": Fact.objects.count(),
        "heads": sorted(FactHead.objects.values_list("entity", "relation", "scope", "fact_id")),
        "conflicts": Conflict.objects.count(),
        "events": Event.objects.count(),
        "clock": (clock.last_fact_seq, clock.last_event_seq, clock.hlc_wall_ms, clock.hlc_counter),
    }


def current(client, relation="memory:role"):
    return client.get("/v1/facts", {"entity": ENTITY, "relation": relation}).json()["facts"]


@pytest.fixture
def seeded(client):
    response = client.post("/v1/facts", fact("manager"), format="json")
    assert response.status_code == 201
    return response.json()


MIXED = [
    fact("a", relation="memory:a"),  # 0 ok
    fact("b", relation="memory:b", confidence=1.5),  # 1 422
    fact("c", relation="memory:c", source="   "),  # 2 400
    fact("d" * 4097, relation="memory:d"),  # 3 413
    {
        "entity": ENTITY,
        "relation": "memory:e",
        "source": S1,
        "value": {"type": "string", "v": "e", "interpret_as": "instruction"},
    },  # 4 403
    fact("f", relation="memory:f", garden_id="stigmem://testnode/garden/g"),  # 5 404
    "not an object",  # 6 422
    fact("h", relation="memory:h", scope="team"),  # 7 ok
]


def test_non_atomic_mixed_batch(client, seeded):
    before_facts = Fact.objects.count()
    response = batch(client, MIXED)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"accepted", "rejected", "results"}
    assert body["accepted"] == 2
    assert body["rejected"] == 6
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(MIXED)))
    assert [r["status"] for r in results] == [201, 422, 400, 413, 403, 404, 422, 201]
    for r in results:
        assert set(r) == {"index", "status", "fact", "error"}
        if r["status"] == 201:
            assert r["error"] is None
            assert r["fact"]["id"]
        else:
            assert r["fact"] is None
            assert set(r["error"]) == {"detail"}

    assert results[0]["fact"]["value"]["v"] == "a"
    assert results[7]["fact"]["scope"] == "team"
    assert results[1]["error"]["detail"][0]["loc"] == ["body", "facts", 1, "confidence"]
    assert results[1]["error"]["detail"][0]["type"] == "confidence_range"
    assert results[2]["error"]["detail"]["code"] == "invalid_source_uri"
    assert results[3]["error"]["detail"]["code"] == "value_too_large"
    assert results[4]["error"]["detail"] == "admin permission required for interpret_as: instruction"
    assert results[5]["error"]["detail"] == "garden not found"
    assert results[6]["error"]["detail"] == [
        {"loc": ["body", "facts", 6], "msg": "expected a JSON object", "type": "dict_type"}
    ]

    # Exactly the valid ones were stored, and they are current.
    assert Fact.objects.count() == before_facts + 2
    stored = {str(f.id): f.relation for f in Fact.objects.exclude(id=seeded["id"])}
    assert stored == {results[0]["fact"]["id"]: "memory:a", results[7]["fact"]["id"]: "memory:h"}
    assert [f["id"] for f in current(client, "memory:a")] == [results[0]["fact"]["id"]]
    assert client.get(f"/v1/facts/{results[7]['fact']['id']}").status_code == 200


def test_non_atomic_all_rejected_writes_nothing(client, seeded):
    before = snapshot()
    response = batch(client, [fact(confidence=-1), fact(scope="nowhere")])
    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert response.json()["rejected"] == 2
    assert [r["status"] for r in response.json()["results"]] == [422, 422]
    assert snapshot() == before


def test_atomic_with_one_bad_item_writes_nothing(client, seeded):
    before = snapshot()
    facts = [fact("a", relation="memory:a"), fact("b", relation="memory:b", confidence=2), fact("c", source=S2)]
    response = batch(client, facts, atomic=True)
    assert response.status_code == 422, response.content
    detail = response.json()["detail"]
    assert [entry["loc"] for entry in detail] == [["body", "facts", 1, "confidence"]]
    assert detail[0]["type"] == "confidence_range"
    assert snapshot() == before


def test_atomic_reports_every_rejection(client, seeded):
    before = snapshot()
    response = batch(client, MIXED, atomic=True)
    assert response.status_code == 422
    detail = response.json()["detail"]
    for entry in detail:
        assert set(entry) == {"loc", "msg", "type"}
        assert isinstance(entry["msg"], str)
        assert entry["msg"]
    by_index = {entry["loc"][2]: entry for entry in detail}
    assert sorted(by_index) == [1, 2, 3, 4, 5, 6]
    assert by_index[1]["loc"] == ["body", "facts", 1, "confidence"]
    assert by_index[2] == {
        "loc": ["body", "facts", 2],
        "msg": by_index[2]["msg"],
        "type": "invalid_source_uri",
    }
    assert by_index[3]["type"] == "value_too_large"
    assert by_index[4]["loc"] == ["body", "facts", 4]
    assert "admin" in by_index[4]["msg"]
    assert by_index[5]["msg"] == "garden not found"
    assert snapshot() == before


def test_atomic_all_valid_writes_all(client):
    facts = [fact(str(i), relation=f"memory:{i}") for i in range(3)]
    response = batch(client, facts, atomic=True)
    assert response.status_code == 200
    assert response.json()["accepted"] == 3
    assert response.json()["rejected"] == 0
    assert Fact.objects.count() == 3


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"facts": []}, ["body", "facts"]),
        ({}, ["body", "facts"]),
        ({"facts": None}, ["body", "facts"]),
        ({"facts": fact()}, ["body", "facts"]),
        ({"facts": "x"}, ["body", "facts"]),
        ({"facts": [fact()], "atomic": "yes"}, ["body", "atomic"]),
        ({"facts": [fact()], "atomic": 1}, ["body", "atomic"]),
        ([fact()], ["body"]),
    ],
    ids=["empty", "missing", "null", "object", "string", "atomic-string", "atomic-int", "list-body"],
)
def test_malformed_batch_is_422(client, seeded, payload, loc):
    before = snapshot()
    response = client.post("/v1/facts/batch", payload, format="json")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [entry["loc"] for entry in detail] == [loc]
    assert isinstance(detail[0]["msg"], str)
    assert snapshot() == before


def test_more_than_1000_facts_is_422(client, seeded):
    before = snapshot()
    facts = [fact(str(i), relation=f"memory:{i}") for i in range(1001)]
    response = batch(client, facts)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "facts"]
    assert response.json()["detail"][0]["type"] == "list_length"
    assert snapshot() == before


def test_exactly_1000_facts_are_accepted(client):
    facts = [fact(str(i), relation=f"memory:{i}") for i in range(1000)]
    response = batch(client, facts)
    assert response.status_code == 200
    assert response.json()["accepted"] == 1000
    assert response.json()["rejected"] == 0
    assert Fact.objects.count() == 1000
    assert FactHead.objects.count() == 1000
    assert NodeClock.objects.get(pk=1).last_fact_seq == 1000


def test_malformed_json_and_content_type(client):
    bad = client.post("/v1/facts/batch", '{"facts": [', content_type="application/json")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["type"] == "json_invalid"
    wrong = client.post("/v1/facts/batch", "facts", content_type="text/plain")
    assert wrong.status_code == 415
    assert Fact.objects.count() == 0


def test_duplicates_in_a_batch_dedupe_to_one_fact(client):
    response = batch(client, [fact("same"), fact("same"), fact("same", confidence=1.0, scope="local")])
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 3
    assert [r["status"] for r in body["results"]] == [201, 201, 201]
    ids = {r["fact"]["id"] for r in body["results"]}
    assert len(ids) == 1
    assert Fact.objects.count() == 1
    assert FactHead.objects.count() == 1
    assert Conflict.objects.count() == 0


def test_duplicate_of_a_stored_fact_returns_it(client, seeded):
    response = batch(client, [fact("manager")])
    assert response.json()["results"][0]["fact"]["id"] == seeded["id"]
    assert Fact.objects.count() == 1


def test_a_then_b_in_one_batch_leaves_b_current(client):
    response = batch(client, [fact("a"), fact("b")])
    a, b = (r["fact"] for r in response.json()["results"])
    assert [f["id"] for f in current(client)] == [b["id"]]
    assert Conflict.objects.count() == 0  # same source: supersession
    versions = client.get("/v1/facts", {"entity": ENTITY, "include_contradicted": "true"}).json()["facts"]
    assert [f["id"] for f in versions] == [b["id"], a["id"]]


def test_a_then_retraction_in_one_batch_clears_the_key(client, seeded):
    response = batch(client, [fact("b"), fact("b", confidence=0)])
    assert response.json()["accepted"] == 2
    assert current(client) == []
    assert FactHead.objects.count() == 0


def test_conflicts_inside_a_batch(client):
    response = batch(client, [fact("a", source=S1), fact("b", source=S2), fact("a", source=S1)])
    results = [r["fact"] for r in response.json()["results"]]
    assert results[0]["id"] == results[2]["id"]
    assert [f["id"] for f in current(client)] == [results[0]["id"]]
    # A -> B -> A records the A/B dispute once.
    assert Conflict.objects.count() == 1
    conflict = Conflict.objects.get()
    assert (str(conflict.fact_a_id), str(conflict.fact_b_id)) == (results[0]["id"], results[1]["id"])
    for r in results:
        assert client.get(f"/v1/facts/{r['id']}").json()["contradicted"] is True


def test_batch_against_stored_head_records_conflict(client, seeded):
    response = batch(client, [fact("engineer", source=S2)])
    new = response.json()["results"][0]["fact"]
    assert new["contradicted"] is True
    assert client.get(f"/v1/facts/{seeded['id']}").json()["contradicted"] is True
    assert Conflict.objects.count() == 1


def test_batch_records_carry_warnings_and_cids(client):
    informal = {"entity": "User:Alice", "relation": "memory:x", "value": {"type": "number", "v": 42}, "source": S1}
    response = batch(client, [informal, fact("plain")])
    first, second = (r["fact"] for r in response.json()["results"])
    assert first["entity"] == "user:alice"
    assert first["warnings"] == [f"entity: {INFORMAL_WARNING}"]
    assert first["value"]["v"] == 42
    assert second["warnings"] == []
    single = client.post("/v1/facts", informal, format="json").json()
    assert single["id"] == first["id"]
    assert single["cid"] == first["cid"]


def test_batch_needs_write(make_client):
    reader = make_client(["read"])
    response = batch(reader, [fact()])
    assert response.status_code == 403
    assert response.json() == {"detail": "write permission required"}
    assert Fact.objects.count() == 0


def test_admin_may_batch_instructions(admin_client):
    item = fact("x")
    item["value"]["interpret_as"] = "instruction"
    response = batch(admin_client, [item], atomic=True)
    assert response.status_code == 200
    assert response.json()["results"][0]["fact"]["value"]["interpret_as"] == "instruction"


def test_batch_records_show_contradicted_like_a_later_get(client, seeded):
    """B disputes the stored head A, then A is re-asserted in the same batch: both are contradicted."""
    response = batch(client, [fact("engineer", source=S2), fact("manager")])
    b, a = (r["fact"] for r in response.json()["results"])
    assert a["id"] == seeded["id"]
    assert [f["id"] for f in current(client)] == [a["id"]]
    assert Conflict.objects.count() == 1
    for record in (a, b):
        assert record["contradicted"] is True
        assert client.get(f"/v1/facts/{record['id']}").json()["contradicted"] is True
