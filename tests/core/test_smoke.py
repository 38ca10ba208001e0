def test_assert_then_get(client):
    body = {
        "entity": "stigmem://testnode/user/alice",
        "relation": "memory:score",
        "value": {"type": "number", "v": 42},
        "source": "stigmem://testnode/agent/test",
        "scope": "company",
        "confidence": 0.9,
    }
    created = client.post("/v1/facts", body, format="json")
    assert created.status_code == 201, created.content
    record = created.json()
    assert record["cid"] == "sha256:ff3fa1685b91cde286e2f8c9432ed9b7090cadbe21f6c94c838c6ca1eba19422"
    assert record["value"]["v"] == 42
    got = client.get(f"/v1/facts/{record['cid']}")
    assert got.status_code == 200
    assert got.json()["id"] == record["id"]
    listed = client.get("/v1/facts", {"entity": "stigmem://testnode/user/alice"})
    assert listed.json()["total"] == 1
