"""Tenant isolation: a key of one tenant never sees or touches another tenant's facts, conflicts or keys."""

from __future__ import annotations

import pytest

from stigmem.models import ApiKey, Conflict, Fact, FactHead

ENTITY = "stigmem://test/user/carol"
RELATION = "memory:city"


def fact_body(value: str, source: str, **extra) -> dict:
    return {
        "entity": ENTITY,
        "relation": RELATION,
        "value": {"type": "string", "v": value},
        "source": source,
        "scope": "company",
        "confidence": 0.8,
        **extra,
    }


@pytest.fixture
def tenant_a(make_client):
    return make_client(["read", "write", "admin"], tenant="tenant-a", entity="stigmem://test/agent/a")


@pytest.fixture
def tenant_b(make_client):
    return make_client(["read", "write", "admin"], tenant="tenant-b", entity="stigmem://test/agent/b")


@pytest.fixture
def b_data(tenant_b):
    """Two disagreeing facts from two sources in tenant B, and the conflict between them."""
    first = tenant_b.post("/v1/facts", fact_body("Paris", "stigmem://test/agent/one"), format="json")
    second = tenant_b.post("/v1/facts", fact_body("Berlin", "stigmem://test/agent/two"), format="json")
    assert first.status_code == 201 and second.status_code == 201
    conflicts = tenant_b.get("/v1/conflicts").json()["conflicts"]
    assert len(conflicts) == 1
    return {"facts": [first.json(), second.json()], "conflict": conflicts[0]}


def test_b_sees_its_own_data(tenant_b, b_data):
    """The fixture really produced visible facts and a conflict (so the 404s below mean isolation)."""
    ids = {f["id"] for f in b_data["facts"]}
    conflict = b_data["conflict"]
    assert conflict["conflict_id"].startswith("stigmem:conflict:")
    assert conflict["status"] == "unresolved"
    assert {conflict["fact_a"]["id"], conflict["fact_b"]["id"]} == ids
    for fact in b_data["facts"]:
        assert tenant_b.get(f"/v1/facts/{fact['id']}").status_code == 200
        assert tenant_b.get(f"/v1/facts/{fact['cid']}").status_code == 200
        assert tenant_b.post(f"/v1/facts/{fact['id']}/verify-cid").json()["cid_valid"] is True
    listed = tenant_b.get("/v1/facts", {"include_contradicted": "true"}).json()
    assert {f["id"] for f in listed["facts"]} == ids


def test_query_never_returns_another_tenants_facts(tenant_a, b_data):
    for params in (
        {},
        {"entity": ENTITY},
        {"relation": RELATION},
        {"source": "stigmem://test/agent/one"},
        {"scope": "company", "include_contradicted": "true"},
    ):
        response = tenant_a.get("/v1/facts", params)
        assert response.status_code == 200
        body = response.json()
        assert body["facts"] == [] and body["total"] == 0, params
        assert response["X-Total-Count"] == "0"


def test_get_by_id_or_cid_is_404(tenant_a, b_data):
    for fact in b_data["facts"]:
        by_id = tenant_a.get(f"/v1/facts/{fact['id']}")
        assert by_id.status_code == 404
        assert by_id.json() == {"detail": "fact not found"}
        by_cid = tenant_a.get(f"/v1/facts/{fact['cid']}")
        assert by_cid.status_code == 404
        assert by_cid.json() == {"detail": "fact not found"}


def test_verify_cid_is_404(tenant_a, b_data):
    for fact in b_data["facts"]:
        for ref in (fact["id"], fact["cid"]):
            response = tenant_a.post(f"/v1/facts/{ref}/verify-cid")
            assert response.status_code == 404
            assert response.json() == {"detail": "fact not found"}


def test_conflict_list_is_isolated(tenant_a, tenant_b, b_data):
    for status in ("unresolved", "resolved"):
        response = tenant_a.get("/v1/conflicts", {"status": status})
        assert response.status_code == 200
        assert response.json() == {"conflicts": [], "cursor": None, "has_more": False}


def test_resolving_another_tenants_conflict_is_404(tenant_a, tenant_b, b_data):
    conflict = b_data["conflict"]
    winner = conflict["fact_a"]["id"]
    bare_id = conflict["conflict_id"].removeprefix("stigmem:conflict:")
    heads_before = list(FactHead.objects.values_list("tenant", "fact_id").order_by("tenant", "fact_id"))
    facts_before = Fact.objects.count()
    for ref in (conflict["conflict_id"], bare_id):
        by_winner = tenant_a.post(f"/v1/conflicts/{ref}/resolve", {"winning_fact_id": winner}, format="json")
        assert by_winner.status_code == 404
        assert by_winner.json() == {"detail": "conflict not found"}
        by_value = tenant_a.post(
            f"/v1/conflicts/{ref}/resolve", {"new_value": {"type": "string", "v": "Rome"}}, format="json"
        )
        assert by_value.status_code == 404
    assert Conflict.objects.get(id=bare_id).status == "unresolved"
    assert Fact.objects.count() == facts_before
    assert list(FactHead.objects.values_list("tenant", "fact_id").order_by("tenant", "fact_id")) == heads_before
    # B itself can still resolve it.
    done = tenant_b.post(f"/v1/conflicts/{bare_id}/resolve", {"winning_fact_id": winner}, format="json")
    assert done.status_code == 200
    assert done.json() == {"resolution_fact_id": winner, "conflict_status": "resolved"}
    assert tenant_a.get("/v1/conflicts", {"status": "resolved"}).json()["conflicts"] == []


def test_same_content_in_two_tenants_is_two_facts(tenant_a, tenant_b, b_data):
    b_fact = b_data["facts"][0]
    body = fact_body("Paris", "stigmem://test/agent/one")
    created = tenant_a.post("/v1/facts", body, format="json")
    assert created.status_code == 201
    a_fact = created.json()
    assert a_fact["cid"] == b_fact["cid"]
    assert a_fact["id"] != b_fact["id"]
    assert Fact.objects.get(id=a_fact["id"]).tenant == "tenant-a"
    # A's copy is not contradicted (the conflict lives in B), and the CID resolves per tenant.
    assert a_fact["contradicted"] is False
    assert tenant_a.get(f"/v1/facts/{b_fact['cid']}").json()["id"] == a_fact["id"]
    assert tenant_b.get(f"/v1/facts/{b_fact['cid']}").json()["id"] == b_fact["id"]
    assert [f["id"] for f in tenant_a.get("/v1/facts").json()["facts"]] == [a_fact["id"]]
    # A different value from a different source in A conflicts only inside A.
    tenant_a.post("/v1/facts", fact_body("Oslo", "stigmem://test/agent/two"), format="json")
    a_conflicts = tenant_a.get("/v1/conflicts").json()["conflicts"]
    assert len(a_conflicts) == 1
    assert a_conflicts[0]["conflict_id"] != b_data["conflict"]["conflict_id"]
    assert len(tenant_b.get("/v1/conflicts").json()["conflicts"]) == 1


def test_writes_land_in_the_callers_tenant(tenant_a, tenant_b):
    created = tenant_a.post("/v1/facts", fact_body("Lima", "stigmem://test/agent/one"), format="json").json()
    assert Fact.objects.get(id=created["id"]).tenant == "tenant-a"
    assert tenant_b.get("/v1/facts").json()["facts"] == []
    batch = tenant_b.post(
        "/v1/facts/batch", {"facts": [fact_body("Quito", "stigmem://test/agent/one")]}, format="json"
    ).json()
    assert batch["accepted"] == 1
    assert Fact.objects.get(id=batch["results"][0]["fact"]["id"]).tenant == "tenant-b"
    assert [f["id"] for f in tenant_a.get("/v1/facts").json()["facts"]] == [created["id"]]


def test_keys_are_isolated(tenant_a, tenant_b):
    a_keys = {k["id"] for k in tenant_a.get("/v1/auth/keys").json()}
    assert a_keys == {str(tenant_a.key.id)}
    response = tenant_a.delete(f"/v1/auth/keys/{tenant_b.key.id}")
    assert response.status_code == 404
    assert ApiKey.objects.get(pk=tenant_b.key.pk).revoked_at is None
    assert tenant_b.get("/v1/me").json()["tenant_id"] == "tenant-b"
