"""Fact writes are audited in the write's own transaction: one row per call, none on rejection."""

from __future__ import annotations

from stigmem.models import AuditEvent, Fact


def body(value: str, **extra) -> dict:
    return {
        "entity": "stigmem://test/user/alice",
        "relation": "memory:colour",
        "value": {"type": "string", "v": value},
        "source": "stigmem://test/agent/notes",
        **extra,
    }


def test_single_assert_writes_one_audit_row(client):
    created = client.post("/v1/facts", body("green"), format="json").json()
    [row] = AuditEvent.objects.filter(event_type="fact_write")
    assert row.tenant == "default"
    assert row.actor == "stigmem://test/agent/tester"
    assert row.detail == {
        "origin": "local",
        "created": 1,
        "reasserted": 0,
        "conflicts": 0,
        "fact_ids": [created["id"]],
    }


def test_batch_is_one_audit_row_with_counts(client):
    facts = [body("green"), body("green"), body("blue", source="stigmem://test/agent/other")]
    response = client.post("/v1/facts/batch", {"facts": facts}, format="json").json()
    assert response["accepted"] == 3
    [row] = AuditEvent.objects.filter(event_type="fact_write")
    assert row.detail["created"] == 2 and row.detail["reasserted"] == 1 and row.detail["conflicts"] == 1
    assert set(row.detail["fact_ids"]) == {str(i) for i in Fact.objects.values_list("id", flat=True)}


def test_rejected_writes_are_not_audited_as_writes(client):
    assert client.post("/v1/facts", body("x", confidence=2), format="json").status_code == 422
    assert (
        client.post("/v1/facts/batch", {"facts": [body("x", scope="nope")], "atomic": True}, format="json").status_code
        == 422
    )
    assert not AuditEvent.objects.filter(event_type="fact_write").exists()
    assert not Fact.objects.exists()
