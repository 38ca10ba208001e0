"""Content ids (WIRE.md §2.3): the six golden CIDs, as unit tests and through the API."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.db import connection

from stigmem.cid import compute_cid, is_cid
from stigmem.models import Fact

SOURCE = "stigmem://testnode/agent/test"
ALICE = "stigmem://testnode/user/alice"

# (name, entity, relation, value {type, v}, scope, confidence, value_v, golden cid)
GOLDEN = [
    (
        "string",
        "stigmem://testnode/user/cid-subject",
        "memory:role",
        {"type": "string", "v": "cid-conformance-test-value"},
        "local",
        1.0,
        "cid-conformance-test-value",
        "sha256:34f271dac8194bddb60b645e4683443426373b9f7628f75443db1f1a0d1e750f",
    ),
    (
        "float",
        ALICE,
        "memory:score",
        {"type": "number", "v": 42.5},
        "company",
        0.9,
        "42.5",
        "sha256:8f3ac4181b2d02ba5dabfe336f4c0643d2a29dc6bcfe4222af524feba5f8bd66",
    ),
    (
        "integer",
        ALICE,
        "memory:score",
        {"type": "number", "v": 42},
        "company",
        0.9,
        "42",
        "sha256:ff3fa1685b91cde286e2f8c9432ed9b7090cadbe21f6c94c838c6ca1eba19422",
    ),
    (
        "integral-float",
        ALICE,
        "memory:score",
        {"type": "number", "v": 42.0},
        "company",
        0.9,
        "42.0",
        "sha256:c2c32c4e40c7f22de40dd77038b38324337c472ede7614b499940a707c5065ac",
    ),
    (
        "boolean",
        ALICE,
        "memory:active",
        {"type": "boolean", "v": True},
        "company",
        1.0,
        "true",
        "sha256:87c6f787cdd36e7f9d68d49c0296c5c30e60eab20d7f14198dcdcfe94c4c7e51",
    ),
    (
        "null",
        ALICE,
        "memory:alias",
        {"type": "null", "v": None},
        "company",
        1.0,
        "null",
        "sha256:9647f6d851da6c034b1764f4bb7ba67a0355a9efb540b7f1ba6a79206c828026",
    ),
    (
        "text",
        ALICE,
        "memory:bio",
        {"type": "text", "v": 'café\n"q"'},
        "team",
        0.8,
        'café\n"q"',
        "sha256:fb7115fd4a5ca6b0354d6061b7720ce77c699b5b531968aeed02b2e4132a7ba3",
    ),
]
GOLDEN_IDS = [g[0] for g in GOLDEN]


def _body(entity, relation, value, scope, confidence, source=SOURCE):
    return {
        "entity": entity,
        "relation": relation,
        "value": value,
        "source": source,
        "scope": scope,
        "confidence": confidence,
    }


@pytest.mark.parametrize(
    ("name", "entity", "relation", "value", "scope", "confidence", "value_v", "cid"), GOLDEN, ids=GOLDEN_IDS
)
def test_compute_cid_golden(name, entity, relation, value, scope, confidence, value_v, cid):
    computed = compute_cid(
        entity=entity,
        relation=relation,
        value_type=value["type"],
        value_v=value_v,
        source=SOURCE,
        confidence=confidence,
        scope=scope,
    )
    assert computed == cid


def test_compute_cid_is_exactly_the_documented_recipe():
    # Recompute one CID by the recipe in WIRE.md §2.3, independently of stigmem.cid.
    body = {
        "confidence": 0.8,
        "entity": ALICE,
        "relation": "memory:bio",
        "scope": "team",
        "source": SOURCE,
        "value_type": "text",
        "value_v": 'café\n"q"',
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert expected == GOLDEN[-1][-1]
    assert (
        compute_cid(
            entity=ALICE,
            relation="memory:bio",
            value_type="text",
            value_v='café\n"q"',
            source=SOURCE,
            confidence=0.8,
            scope="team",
        )
        == expected
    )


def test_compute_cid_hashes_confidence_as_float():
    common = {
        "entity": ALICE,
        "relation": "memory:active",
        "value_type": "boolean",
        "value_v": "true",
        "source": SOURCE,
        "scope": "company",
    }
    assert compute_cid(confidence=1, **common) == compute_cid(confidence=1.0, **common)
    assert compute_cid(confidence=1, **common) == GOLDEN[4][-1]


@pytest.mark.parametrize(
    "change",
    [
        {"entity": "stigmem://testnode/user/bob"},
        {"relation": "memory:other"},
        {"value_type": "text"},
        {"value_v": "cid-conformance-test-value "},
        {"source": "stigmem://testnode/agent/other"},
        {"confidence": 0.99},
        {"scope": "team"},
    ],
)
def test_compute_cid_depends_on_every_field(change):
    base = {
        "entity": "stigmem://testnode/user/cid-subject",
        "relation": "memory:role",
        "value_type": "string",
        "value_v": "cid-conformance-test-value",
        "source": SOURCE,
        "confidence": 1.0,
        "scope": "local",
    }
    assert compute_cid(**base) == GOLDEN[0][-1]
    changed = compute_cid(**{**base, **change})
    assert changed != GOLDEN[0][-1]
    assert is_cid(changed)


def test_is_cid():
    assert is_cid(GOLDEN[0][-1])
    assert not is_cid("sha256:xyz")
    assert not is_cid(GOLDEN[0][-1].upper())
    assert not is_cid(GOLDEN[0][-1][:-1])
    assert not is_cid(GOLDEN[0][-1] + "0")
    assert not is_cid(GOLDEN[0][-1].removeprefix("sha256:"))


@pytest.mark.parametrize(
    ("name", "entity", "relation", "value", "scope", "confidence", "value_v", "cid"), GOLDEN, ids=GOLDEN_IDS
)
def test_golden_cid_through_the_api(client, name, entity, relation, value, scope, confidence, value_v, cid):
    response = client.post("/v1/facts", _body(entity, relation, value, scope, confidence), format="json")
    assert response.status_code == 201, response.content
    record = response.json()
    assert record["cid"] == cid
    assert record["value"]["type"] == value["type"]
    assert record["value"]["v"] == value["v"]
    assert type(record["value"]["v"]) is type(value["v"])
    fact = Fact.objects.get(id=record["id"])
    assert fact.cid == cid
    assert fact.value_v == value_v
    # The stored record can be fetched by its CID and verifies.
    got = client.get(f"/v1/facts/{cid}")
    assert got.status_code == 200
    assert got.json()["id"] == record["id"]
    assert got.json()["value"]["v"] == value["v"]
    verified = client.post(f"/v1/facts/{record['id']}/verify-cid")
    assert verified.status_code == 200
    assert verified.json() == {"cid_valid": True, "computed_cid": cid, "stored_cid": cid, "mismatch_reason": None}


def test_golden_cid_uses_normalized_entity_and_source(client):
    """Unnormalized (but formal) URIs hash like their normalized form, without warnings."""
    body = _body(
        "  stigmem://TestNode/USER/CID-Subject ",
        "memory:role",
        {"type": "string", "v": "cid-conformance-test-value"},
        "local",
        1.0,
        source="stigmem://TESTNODE/Agent/Test",
    )
    response = client.post("/v1/facts", body, format="json")
    assert response.status_code == 201, response.content
    record = response.json()
    assert record["cid"] == GOLDEN[0][-1]
    assert record["entity"] == "stigmem://testnode/user/cid-subject"
    assert record["source"] == SOURCE
    assert record["warnings"] == []


def test_golden_cid_defaults(client):
    """Omitted scope and confidence hash as "local" and 1.0."""
    body = {
        "entity": "stigmem://testnode/user/cid-subject",
        "relation": "memory:role",
        "value": {"type": "string", "v": "cid-conformance-test-value"},
        "source": SOURCE,
    }
    response = client.post("/v1/facts", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["cid"] == GOLDEN[0][-1]
    assert response.json()["scope"] == "local"
    assert response.json()["confidence"] == 1.0


def test_integer_confidence_hashes_like_float(client):
    body = _body(ALICE, "memory:active", {"type": "boolean", "v": True}, "company", 1)
    response = client.post("/v1/facts", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["cid"] == GOLDEN[4][-1]
    assert response.json()["confidence"] == 1.0


def test_verify_cid_by_cid_and_detects_a_corrupted_row(client):
    entity, relation, value, scope, confidence = GOLDEN[1][1:6]
    record = client.post("/v1/facts", _body(entity, relation, value, scope, confidence), format="json").json()
    by_cid = client.post(f"/v1/facts/{record['cid']}/verify-cid")
    assert by_cid.status_code == 200
    assert by_cid.json()["cid_valid"] is True

    # Corrupt the stored CID behind the model's back (the model refuses content updates).
    bogus = "sha256:" + "0" * 64
    pk = Fact._meta.pk.get_db_prep_value(Fact.objects.get(id=record["id"]).id, connection)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {Fact._meta.db_table} SET cid = %s WHERE id = %s", [bogus, pk])
    response = client.post(f"/v1/facts/{record['id']}/verify-cid")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"cid_valid", "computed_cid", "stored_cid", "mismatch_reason"}
    assert body["cid_valid"] is False
    assert body["computed_cid"] == GOLDEN[1][-1]
    assert body["stored_cid"] == bogus
    assert isinstance(body["mismatch_reason"], str)
    assert body["mismatch_reason"]


def test_verify_cid_unknown_and_malformed(client):
    unknown = client.post("/v1/facts/00000000-0000-4000-8000-000000000000/verify-cid")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "fact not found"}
    unknown_cid = client.post(f"/v1/facts/sha256:{'a' * 64}/verify-cid")
    assert unknown_cid.status_code == 404
    assert unknown_cid.json() == {"detail": "fact not found"}
    malformed = client.post("/v1/facts/sha256:xyz/verify-cid")
    assert malformed.status_code == 400
    assert malformed.json()["detail"]["code"] == "cid_malformed"


def test_same_content_in_two_tenants_has_the_same_cid_but_separate_facts(client, make_client):
    other = make_client(["read", "write"], tenant="other")
    entity, relation, value, scope, confidence = GOLDEN[0][1:6]
    body = _body(entity, relation, value, scope, confidence)
    mine = client.post("/v1/facts", body, format="json").json()
    theirs = other.post("/v1/facts", body, format="json").json()
    assert mine["cid"] == theirs["cid"] == GOLDEN[0][-1]
    assert mine["id"] != theirs["id"]
    assert Fact.objects.filter(cid=GOLDEN[0][-1]).count() == 2
