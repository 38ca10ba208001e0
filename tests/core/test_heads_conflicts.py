"""Current values, retraction, supersession and conflicts (DESIGN.md §4, WIRE.md §2.7)."""

from __future__ import annotations

import uuid

import pytest

from stigmem.auth import Caller
from stigmem.conflicts import list_conflicts
from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts
from stigmem.models import Conflict, Event, Fact, FactHead, NodeClock

ENTITY = "stigmem://testnode/user/alice"
RELATION = "memory:role"
S1 = "stigmem://testnode/agent/one"
S2 = "stigmem://testnode/agent/two"
RESOLVER = "stigmem://test/agent/tester"  # the `client` fixture's identity
CONFLICT_PREFIX = "stigmem:conflict:"


def body(v, source=S1, *, relation=RELATION, entity=ENTITY, scope="local", confidence=1.0):
    return {
        "entity": entity,
        "relation": relation,
        "value": {"type": "string", "v": v},
        "source": source,
        "scope": scope,
        "confidence": confidence,
    }


def write(client, v, source=S1, **kw):
    response = client.post("/v1/facts", body(v, source, **kw), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def current(client, relation=RELATION, **params):
    response = client.get("/v1/facts", {"entity": ENTITY, "relation": relation, **params})
    assert response.status_code == 200, response.content
    return response.json()["facts"]


def current_values(client, relation=RELATION):
    return [f["value"]["v"] for f in current(client, relation)]


def all_versions(client, relation=RELATION):
    return current(client, relation, include_contradicted="true")


def fetch(client, fact_id):
    response = client.get(f"/v1/facts/{fact_id}")
    assert response.status_code == 200
    return response.json()


def snapshot():
    clock = NodeClock.objects.get(pk=1)
    return {
        "facts": sorted(Fact.objects.values_list("id", "contradicted")),
        "heads": sorted(FactHead.objects.values_list("entity", "relation", "scope", "fact_id")),
        "conflicts": sorted(
            Conflict.objects.values_list("id", "status", "resolved_by", "resolution_fact_id", "resolution_note")
        ),
        "events": Event.objects.count(),
        "clock": (clock.last_fact_seq, clock.last_event_seq, clock.hlc_wall_ms, clock.hlc_counter),
    }


def head_fact_id(relation=RELATION, scope="local"):
    head = FactHead.objects.filter(tenant="default", entity=ENTITY, relation=relation, scope=scope).first()
    return str(head.fact_id) if head else None


@pytest.fixture
def conflict(client):
    """A (S1: "manager") vs B (S2: "engineer") conflict on the key; B is current."""
    a = write(client, "manager", S1)
    b = write(client, "engineer", S2)
    listed = client.get("/v1/conflicts").json()["conflicts"]
    assert len(listed) == 1
    return {"a": a, "b": b, "id": listed[0]["conflict_id"]}


# --- current values -----------------------------------------------------------------------------


def test_latest_assert_is_current(client):
    write(client, "manager")
    b = write(client, "engineer")
    assert [f["id"] for f in current(client)] == [b["id"]]
    assert head_fact_id() == b["id"]


def test_a_b_a_leaves_a_current_with_the_same_id(client):
    a = write(client, "manager")
    b = write(client, "engineer")
    again = client.post("/v1/facts", body("manager"), format="json")
    assert again.status_code == 201
    assert again.json()["id"] == a["id"]
    assert again.json()["cid"] == a["cid"]
    assert [f["id"] for f in current(client)] == [a["id"]]
    assert head_fact_id() == a["id"]
    # No duplicate row: two versions in all.
    assert Fact.objects.count() == 2
    assert sorted(f["id"] for f in all_versions(client)) == sorted([a["id"], b["id"]])


def test_reasserting_the_current_value_changes_nothing(client):
    a = write(client, "manager")
    before = snapshot()
    again = client.post("/v1/facts", body("manager"), format="json")
    assert again.status_code == 201
    assert again.json()["id"] == a["id"]
    assert again.json()["hlc"] == a["hlc"]
    assert again.json()["timestamp"] == a["timestamp"]
    assert snapshot() == before


def test_keys_are_entity_relation_scope(client):
    local = write(client, "manager", scope="local")
    team = write(client, "engineer", scope="team")
    other_relation = write(client, "x", relation="memory:other")
    other_entity = write(client, "y", entity="stigmem://testnode/user/bob")
    assert [f["id"] for f in current(client, scope="local")] == [local["id"]]
    assert [f["id"] for f in current(client, scope="team")] == [team["id"]]
    assert FactHead.objects.count() == 4
    assert {str(h.fact_id) for h in FactHead.objects.all()} == {
        local["id"],
        team["id"],
        other_relation["id"],
        other_entity["id"],
    }


def test_retraction_clears_the_key(client):
    a = write(client, "manager")
    retraction = write(client, "manager", confidence=0.0)
    assert retraction["id"] != a["id"]
    assert retraction["confidence"] == 0.0
    assert current(client) == []
    assert head_fact_id() is None
    versions = all_versions(client)
    assert sorted(f["id"] for f in versions) == sorted([a["id"], retraction["id"]])
    # Nothing else was disturbed, and no conflict.
    assert Conflict.objects.count() == 0


def test_retraction_by_another_source_with_another_value_clears_without_conflict(client):
    write(client, "manager", S1)
    write(client, "whatever", S2, confidence=0)
    assert current(client) == []
    assert Conflict.objects.count() == 0


def test_retraction_of_an_empty_key_is_stored_and_key_stays_empty(client):
    retraction = write(client, "nothing", confidence=0.0)
    assert current(client) == []
    assert [f["id"] for f in all_versions(client)] == [retraction["id"]]


def test_reassert_after_retraction_becomes_current_again(client):
    a = write(client, "manager")
    write(client, "manager", confidence=0.0)
    again = write(client, "manager")
    assert again["id"] == a["id"]
    assert [f["id"] for f in current(client)] == [a["id"]]


def test_new_value_after_retraction_from_another_source_is_no_conflict(client):
    write(client, "manager", S1)
    write(client, "manager", S1, confidence=0.0)
    c = write(client, "engineer", S2)
    assert [f["id"] for f in current(client)] == [c["id"]]
    assert Conflict.objects.count() == 0
    assert c["contradicted"] is False


# --- conflicts ----------------------------------------------------------------------------------


def test_same_source_changing_its_value_is_supersession(client):
    a = write(client, "manager", S1)
    b = write(client, "engineer", S1)
    assert Conflict.objects.count() == 0
    assert b["contradicted"] is False
    assert fetch(client, a["id"])["contradicted"] is False
    assert client.get("/v1/conflicts").json()["conflicts"] == []
    assert [f["id"] for f in current(client)] == [b["id"]]


def test_same_value_from_another_source_is_no_conflict(client):
    a = write(client, "manager", S1)
    b = write(client, "manager", S2)
    assert a["id"] != b["id"]
    assert Conflict.objects.count() == 0
    assert b["contradicted"] is False
    assert fetch(client, a["id"])["contradicted"] is False
    assert [f["id"] for f in current(client)] == [b["id"]]


def test_same_text_as_other_type_from_another_source_is_a_conflict(client):
    write(client, "42", S1)
    response = client.post(
        "/v1/facts",
        {"entity": ENTITY, "relation": RELATION, "value": {"type": "number", "v": 42}, "source": S2},
        format="json",
    )
    assert response.status_code == 201
    assert Conflict.objects.count() == 1


def test_different_value_from_another_source_is_a_conflict(client, conflict):
    a, b = conflict["a"], conflict["b"]
    assert b["contradicted"] is True
    assert fetch(client, a["id"])["contradicted"] is True
    assert fetch(client, b["id"])["contradicted"] is True
    # The newer value is still current.
    assert [f["id"] for f in current(client)] == [b["id"]]
    stored = Conflict.objects.get()
    assert (str(stored.fact_a_id), str(stored.fact_b_id)) == (a["id"], b["id"])
    assert stored.status == "unresolved"
    assert Event.objects.filter(topic="conflict.detected").count() == 1


def test_conflict_list_shape(client, conflict):
    response = client.get("/v1/conflicts")
    assert response.status_code == 200
    page = response.json()
    assert set(page) == {"conflicts", "cursor", "has_more"}
    assert page["cursor"] is None
    assert page["has_more"] is False
    (item,) = page["conflicts"]
    assert set(item) == {"conflict_id", "fact_a", "fact_b", "status", "resolved_by", "detected_at"}
    assert item["conflict_id"].startswith(CONFLICT_PREFIX)
    uuid.UUID(item["conflict_id"].removeprefix(CONFLICT_PREFIX))
    assert item["conflict_id"] == Conflict.objects.get().public_id
    assert item["fact_a"]["id"] == conflict["a"]["id"]
    assert item["fact_b"]["id"] == conflict["b"]["id"]
    assert item["fact_a"]["value"]["v"] == "manager"
    assert item["fact_b"]["value"]["v"] == "engineer"
    assert item["status"] == "unresolved"
    assert item["resolved_by"] is None
    assert item["detected_at"].endswith("+00:00")


def test_reasserting_either_side_does_not_duplicate_the_conflict(client, conflict):
    write(client, "manager", S1)
    write(client, "engineer", S2)
    write(client, "manager", S1)
    assert Conflict.objects.count() == 1
    assert [f["value"]["v"] for f in current(client)] == ["manager"]


def test_a_third_value_from_the_first_source_is_a_new_conflict(client, conflict):
    c = write(client, "director", S1)
    assert Conflict.objects.count() == 2
    newest = Conflict.objects.exclude(id=Conflict.objects.order_by("detected_at").first().id)
    assert {(str(x.fact_a_id), str(x.fact_b_id)) for x in newest} == {(conflict["b"]["id"], c["id"])}
    assert [f["id"] for f in current(client)] == [c["id"]]


def test_conflicts_are_per_key(client):
    write(client, "manager", S1)
    write(client, "engineer", S2, scope="team")
    write(client, "engineer", S2, relation="memory:other")
    assert Conflict.objects.count() == 0


def test_query_include_contradicted(client, conflict):
    assert [f["id"] for f in current(client)] == [conflict["b"]["id"]]
    versions = all_versions(client)
    assert [f["id"] for f in versions] == [conflict["b"]["id"], conflict["a"]["id"]]
    assert all(f["contradicted"] for f in versions)


def test_conflict_status_filter(client, conflict):
    assert len(client.get("/v1/conflicts", {"status": "unresolved"}).json()["conflicts"]) == 1
    assert client.get("/v1/conflicts", {"status": "resolved"}).json()["conflicts"] == []
    client.post(f"/v1/conflicts/{conflict['id']}/resolve", {"winning_fact_id": conflict["a"]["id"]}, format="json")
    assert client.get("/v1/conflicts", {"status": "unresolved"}).json()["conflicts"] == []
    assert client.get("/v1/conflicts").json()["conflicts"] == []
    resolved = client.get("/v1/conflicts", {"status": "resolved"}).json()["conflicts"]
    assert [c["conflict_id"] for c in resolved] == [conflict["id"]]
    assert resolved[0]["status"] == "resolved"
    assert resolved[0]["resolved_by"] == RESOLVER


@pytest.mark.parametrize("status", ["open", "RESOLVED", "all"])
def test_conflict_bad_status_is_422(client, status):
    response = client.get("/v1/conflicts", {"status": status})
    assert response.status_code == 422
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["query", "status"]
    assert entry["type"] == "literal_error"


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-1"])
def test_conflict_bad_limit_is_422(client, limit):
    response = client.get("/v1/conflicts", {"limit": limit})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


def test_conflict_bad_cursor_is_400(client, conflict):
    response = client.get("/v1/conflicts", {"cursor": "not-a-cursor"})
    assert response.status_code == 400
    assert response.json()["detail"]["code"] == "cursor_invalid"
    # A fact cursor is not a conflict cursor.
    for i in range(3):
        write(client, str(i), relation=f"memory:c{i}")
    fact_cursor = client.get("/v1/facts", {"limit": 1}).json()["cursor"]
    assert fact_cursor
    response = client.get("/v1/conflicts", {"cursor": fact_cursor})
    assert response.status_code == 400
    assert response.json()["detail"]["code"] == "cursor_invalid"


def _make_conflicts(client, n):
    for i in range(n):
        write(client, "a", S1, relation=f"memory:k{i}")
        write(client, "b", S2, relation=f"memory:k{i}")


def test_conflict_paging(client):
    _make_conflicts(client, 5)
    seen = []
    pages = []
    cursor = None
    while True:
        params = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/v1/conflicts", params)
        assert response.status_code == 200
        page = response.json()
        pages.append((len(page["conflicts"]), page["has_more"], page["cursor"] is not None))
        seen.extend(c["conflict_id"] for c in page["conflicts"])
        cursor = page["cursor"]
        if not page["has_more"]:
            assert cursor is None
            break
    assert pages == [(2, True, True), (2, True, True), (1, False, False)]
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == {c.public_id for c in Conflict.objects.all()}


def test_conflict_paging_with_ties_in_detected_at(client):
    """A batch detects several conflicts at one instant: the keyset cursor must not lose any."""
    facts = [body("a", S1, relation=f"memory:t{i}") for i in range(4)]
    client.post("/v1/facts/batch", {"facts": facts}, format="json")
    facts = [body("b", S2, relation=f"memory:t{i}") for i in range(4)]
    client.post("/v1/facts/batch", {"facts": facts}, format="json")
    assert Conflict.objects.count() == 4
    assert Conflict.objects.values("detected_at").distinct().count() == 1
    seen = []
    cursor = None
    for _ in range(10):
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/conflicts", params).json()
        seen.extend(c["conflict_id"] for c in page["conflicts"])
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert len(seen) == len(set(seen)) == 4


def test_conflicts_of_another_tenant_are_invisible(client, make_client, conflict):
    other = make_client(["read", "write"], tenant="other")
    assert other.get("/v1/conflicts").json()["conflicts"] == []
    before = snapshot()
    response = other.post(
        f"/v1/conflicts/{conflict['id']}/resolve", {"winning_fact_id": conflict["a"]["id"]}, format="json"
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "conflict not found"}
    assert snapshot() == before


def test_list_conflicts_service(client, conflict):
    caller = Caller(RESOLVER, "default", frozenset({"read"}))
    page = list_conflicts(caller, "unresolved", None, 50)
    assert [c.public_id for c in page.conflicts] == [conflict["id"]]
    assert page.has_more is False
    assert page.cursor is None


# --- resolving ----------------------------------------------------------------------------------


def test_resolve_with_winner(client, conflict):
    a = conflict["a"]
    response = client.post(
        f"/v1/conflicts/{conflict['id']}/resolve",
        {"winning_fact_id": a["id"], "resolution_note": "a is right"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"resolution_fact_id": a["id"], "conflict_status": "resolved"}
    assert [f["id"] for f in current(client)] == [a["id"]]
    assert head_fact_id() == a["id"]
    assert fetch(client, a["id"])["contradicted"] is False
    stored = Conflict.objects.get()
    assert stored.status == "resolved"
    assert stored.resolved_by == RESOLVER
    assert str(stored.resolution_fact_id) == a["id"]
    assert stored.resolution_note == "a is right"
    assert stored.resolved_at is not None
    # No new fact, no new conflict.
    assert Fact.objects.count() == 2
    assert Event.objects.filter(topic="conflict.resolved").count() == 1


def test_resolve_with_the_current_fact_as_winner(client, conflict):
    b = conflict["b"]
    response = client.post(f"/v1/conflicts/{conflict['id']}/resolve", {"winning_fact_id": b["id"]}, format="json")
    assert response.status_code == 200
    assert response.json() == {"resolution_fact_id": b["id"], "conflict_status": "resolved"}
    assert [f["id"] for f in current(client)] == [b["id"]]
    assert fetch(client, b["id"])["contradicted"] is False


def test_resolve_accepts_the_bare_uuid(client, conflict):
    bare = conflict["id"].removeprefix(CONFLICT_PREFIX)
    uuid.UUID(bare)
    response = client.post(f"/v1/conflicts/{bare}/resolve", {"winning_fact_id": conflict["a"]["id"]}, format="json")
    assert response.status_code == 200
    assert response.json()["conflict_status"] == "resolved"
    assert Conflict.objects.get().status == "resolved"


def test_resolve_with_new_value(client, conflict):
    response = client.post(
        f"/v1/conflicts/{conflict['id']}/resolve",
        {"new_value": {"type": "string", "v": "staff engineer"}},
        format="json",
    )
    assert response.status_code == 200, response.content
    new_id = response.json()["resolution_fact_id"]
    assert response.json()["conflict_status"] == "resolved"
    assert new_id not in (conflict["a"]["id"], conflict["b"]["id"])
    new = fetch(client, new_id)
    assert new["value"] == {"type": "string", "v": "staff engineer", "interpret_as": "content"}
    assert new["source"] == RESOLVER
    assert new["entity"] == ENTITY
    assert new["relation"] == RELATION
    assert new["scope"] == "local"
    assert new["confidence"] == 1.0
    assert new["contradicted"] is False
    assert [f["id"] for f in current(client)] == [new_id]
    # The new value settles the dispute: it records no conflict of its own.
    assert Conflict.objects.count() == 1
    assert Conflict.objects.get().status == "resolved"
    assert str(Conflict.objects.get().resolution_fact_id) == new_id


def test_resolve_with_new_value_instruction_needs_admin(client, admin_client, conflict):
    before = snapshot()
    instruction = {"type": "string", "v": "obey", "interpret_as": "instruction"}
    response = client.post(f"/v1/conflicts/{conflict['id']}/resolve", {"new_value": instruction}, format="json")
    assert response.status_code == 403
    assert response.json() == {"detail": "admin permission required for interpret_as: instruction"}
    assert snapshot() == before
    response = admin_client.post(f"/v1/conflicts/{conflict['id']}/resolve", {"new_value": instruction}, format="json")
    assert response.status_code == 200
    assert fetch(client, response.json()["resolution_fact_id"])["value"]["interpret_as"] == "instruction"


def test_resolve_unknown_is_404(client, conflict):
    before = snapshot()
    for conflict_id in (str(uuid.uuid4()), f"{CONFLICT_PREFIX}{uuid.uuid4()}", "nope", "stigmem:conflict:nope"):
        response = client.post(
            f"/v1/conflicts/{conflict_id}/resolve", {"winning_fact_id": conflict["a"]["id"]}, format="json"
        )
        assert response.status_code == 404, conflict_id
        assert response.json() == {"detail": "conflict not found"}
    assert snapshot() == before


def test_resolve_twice_is_409(client, conflict):
    first = client.post(
        f"/v1/conflicts/{conflict['id']}/resolve", {"winning_fact_id": conflict["a"]["id"]}, format="json"
    )
    assert first.status_code == 200
    before = snapshot()
    for payload in ({"winning_fact_id": conflict["b"]["id"]}, {"new_value": {"type": "string", "v": "z"}}):
        again = client.post(f"/v1/conflicts/{conflict['id']}/resolve", payload, format="json")
        assert again.status_code == 409
        assert again.json() == {"detail": "conflict already resolved"}
    assert snapshot() == before
    assert [f["id"] for f in current(client)] == [conflict["a"]["id"]]


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({}, ["body"]),
        ({"resolution_note": "just a note"}, ["body"]),
        ({"winning_fact_id": None, "new_value": None}, ["body"]),
        ({"winning_fact_id": str(uuid.uuid4())}, ["body", "winning_fact_id"]),
        ({"winning_fact_id": "not-a-fact"}, ["body", "winning_fact_id"]),
        ({"winning_fact_id": 5}, ["body", "winning_fact_id"]),
        ({"new_value": {"type": "number", "v": "x"}}, ["body", "new_value", "v"]),
        ({"new_value": {"type": "bogus"}}, ["body", "new_value", "type"]),
        ({"new_value": "plain"}, ["body", "new_value"]),
        ({"winning_fact_id": "x", "resolution_note": 5}, ["body", "resolution_note"]),
    ],
    ids=[
        "empty",
        "note-only",
        "both-null",
        "unknown-winner",
        "garbage-winner",
        "number-winner",
        "bad-new-value",
        "bad-new-type",
        "new-value-not-object",
        "bad-note",
    ],
)
def test_resolve_invalid_is_422_and_changes_nothing(client, conflict, payload, loc):
    before = snapshot()
    response = client.post(f"/v1/conflicts/{conflict['id']}/resolve", payload, format="json")
    assert response.status_code == 422, response.content
    detail = response.json()["detail"]
    assert [entry["loc"] for entry in detail] == [loc]
    assert isinstance(detail[0]["msg"], str)
    assert isinstance(detail[0]["type"], str)
    assert snapshot() == before
    assert Conflict.objects.get().status == "unresolved"


def test_resolve_with_a_fact_of_another_conflict_is_422(client, conflict):
    write(client, "x", S1, relation="memory:other")
    other = write(client, "y", S2, relation="memory:other")
    before = snapshot()
    response = client.post(f"/v1/conflicts/{conflict['id']}/resolve", {"winning_fact_id": other["id"]}, format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "winning_fact_id"]
    assert snapshot() == before


def test_resolve_body_must_be_an_object(client, conflict):
    before = snapshot()
    response = client.post(f"/v1/conflicts/{conflict['id']}/resolve", [conflict["a"]["id"]], format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert snapshot() == before


def test_resolve_needs_write(make_client, conflict):
    reader = make_client(["read"])
    before = snapshot()
    response = reader.post(
        f"/v1/conflicts/{conflict['id']}/resolve", {"winning_fact_id": conflict["a"]["id"]}, format="json"
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "write permission required"}
    assert snapshot() == before


def test_new_conflict_after_resolution_reopens_the_dispute(client, conflict):
    client.post(f"/v1/conflicts/{conflict['id']}/resolve", {"winning_fact_id": conflict["a"]["id"]}, format="json")
    write(client, "engineer", S2)  # B again, from S2
    assert Conflict.objects.filter(status="unresolved").count() == 1
    assert [f["id"] for f in current(client)] == [conflict["b"]["id"]]


# --- the service function -----------------------------------------------------------------------


def test_assert_facts_service_outcomes(db):
    items = [
        parse_fact_body(body("manager", S1)),
        parse_fact_body(body("engineer", S2)),
        parse_fact_body(body("manager", S1)),
    ]
    outcomes = assert_facts("default", items)
    assert [o.created for o in outcomes] == [True, True, False]
    assert outcomes[0].fact.id == outcomes[2].fact.id
    assert Fact.objects.count() == 2
    assert head_fact_id() == str(outcomes[0].fact.id)
    # A -> B -> A in one call records the A/B dispute once, as three separate calls would.
    assert Conflict.objects.count() == 1
    assert assert_facts("default", []) == []
