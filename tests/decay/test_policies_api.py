"""/v1/decay/policies (WIRE.md §7): CRUD, validation, overlaps, precedence order, tenant isolation."""

from __future__ import annotations

import pytest

from decay.models import DecayPolicy
from stigmem.models import AuditEvent
from tests.decay.api_helpers import policy_rows, seed

POLICIES = "/v1/decay/policies"
RECORD_KEYS = {
    "id",
    "name",
    "relation_prefix",
    "scope",
    "ttl_seconds",
    "half_life_seconds",
    "min_confidence",
    "enabled",
    "created_at",
    "updated_at",
}


def audit_rows() -> int:
    return AuditEvent.objects.filter(event_type__startswith="decay_policy").count()


def create(client, **body):
    return client.post(POLICIES, {"name": "p", **body}, format="json")


# --- create ----------------------------------------------------------------------------------


def test_create_with_defaults(admin_client):
    response = create(admin_client, name="  memories  ", ttl_seconds=3600)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == RECORD_KEYS
    assert body["name"] == "memories"
    assert body["relation_prefix"] == ""
    assert body["scope"] is None
    assert (body["ttl_seconds"], body["half_life_seconds"], body["min_confidence"]) == (3600, None, None)
    assert body["enabled"] is True
    assert body["created_at"] == body["updated_at"] or body["created_at"] <= body["updated_at"]
    policy = DecayPolicy.objects.get(pk=body["id"])
    assert (policy.tenant, policy.created_by) == ("default", "stigmem://test/agent/admin")
    [entry] = AuditEvent.objects.filter(event_type="decay_policy_created")
    assert entry.target == str(body["id"])
    assert entry.detail["ttl_seconds"] == 3600


def test_create_with_everything(admin_client):
    body = create(
        admin_client,
        relation_prefix="memory:",
        scope="team",
        ttl_seconds=0,
        half_life_seconds=86400,
        min_confidence=0.2,
        enabled=False,
    ).json()
    assert {k: body[k] for k in RECORD_KEYS - {"id", "created_at", "updated_at"}} == {
        "name": "p",
        "relation_prefix": "memory:",
        "scope": "team",
        "ttl_seconds": 0,
        "half_life_seconds": 86400,
        "min_confidence": 0.2,
        "enabled": False,
    }


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"ttl_seconds": -1}, ["body", "ttl_seconds"]),
        ({"half_life_seconds": 0}, ["body", "half_life_seconds"]),
        ({"half_life_seconds": -60}, ["body", "half_life_seconds"]),
        ({"min_confidence": 1.5}, ["body", "min_confidence"]),
        ({"min_confidence": -0.1}, ["body", "min_confidence"]),
        ({"min_confidence": "0.5"}, ["body", "min_confidence"]),
        ({"min_confidence": True}, ["body", "min_confidence"]),
        ({"ttl_seconds": "60"}, ["body", "ttl_seconds"]),
        ({"ttl_seconds": 1.5}, ["body", "ttl_seconds"]),
        ({"ttl_seconds": True}, ["body", "ttl_seconds"]),
        ({"ttl_seconds": 10**30}, ["body", "ttl_seconds"]),
        ({"ttl_seconds": 60, "scope": "galaxy"}, ["body", "scope"]),
        ({"ttl_seconds": 60, "scope": 3}, ["body", "scope"]),
        ({"ttl_seconds": 60, "relation_prefix": "a\x00b"}, ["body", "relation_prefix"]),
        ({"ttl_seconds": 60, "relation_prefix": "r" * 257}, ["body", "relation_prefix"]),
        ({"ttl_seconds": 60, "relation_prefix": 5}, ["body", "relation_prefix"]),
        ({"ttl_seconds": 60, "name": ""}, ["body", "name"]),
        ({"ttl_seconds": 60, "name": "   "}, ["body", "name"]),
        ({"ttl_seconds": 60, "name": "n" * 201}, ["body", "name"]),
        ({"ttl_seconds": 60, "name": None}, ["body", "name"]),
        ({"ttl_seconds": 60, "enabled": "yes"}, ["body", "enabled"]),
        ({}, ["body"]),
        ({"ttl_seconds": None, "half_life_seconds": None, "min_confidence": None}, ["body"]),
    ],
)
def test_bad_create_is_422_and_changes_nothing(admin_client, body, loc):
    response = create(admin_client, **body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc
    assert policy_rows() == [] and audit_rows() == 0


def test_missing_name_is_422(admin_client):
    response = admin_client.post(POLICIES, {"ttl_seconds": 60}, format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
    assert policy_rows() == []


@pytest.mark.parametrize("body", ['["a list"]', '"text"', "{not json", "null"])
def test_non_object_body_is_422(admin_client, body):
    response = admin_client.generic("POST", POLICIES, body, content_type="application/json")
    assert response.status_code == 422
    assert policy_rows() == []


def test_same_prefix_and_scope_is_409(admin_client):
    first = create(admin_client, relation_prefix="memory:", scope="team", ttl_seconds=60).json()
    before = (policy_rows(), audit_rows())
    response = create(admin_client, name="again", relation_prefix="memory:", scope="team", half_life_seconds=5)
    assert response.status_code == 409
    assert response.json() == {"detail": f"a policy with this relation_prefix and scope exists: {first['id']}"}
    assert (policy_rows(), audit_rows()) == before
    # "" and null both mean any scope: the same match.
    any_scope = create(admin_client, relation_prefix="x", scope=None, ttl_seconds=1).json()
    clash = create(admin_client, relation_prefix="x", scope="", ttl_seconds=2)
    assert clash.status_code == 409
    assert clash.json() == {"detail": f"a policy with this relation_prefix and scope exists: {any_scope['id']}"}


def test_overlapping_but_different_matches_are_allowed(admin_client):
    for prefix, scope in [("", None), ("memory:", None), ("memory:", "team"), ("memory:colour", None)]:
        assert create(admin_client, relation_prefix=prefix, scope=scope, ttl_seconds=60).status_code == 201


def test_the_same_match_in_another_tenant_is_allowed(make_client):
    assert create(make_client(["admin"]), relation_prefix="m", ttl_seconds=1).status_code == 201
    assert create(make_client(["admin"], tenant="acme"), relation_prefix="m", ttl_seconds=1).status_code == 201


# --- list and get ----------------------------------------------------------------------------


def test_list_is_in_precedence_order(admin_client, make_client):
    made = {}
    for name, prefix, scope in [
        ("any", "", None),
        ("memory-any", "memory:", None),
        ("memory-team", "memory:", "team"),
        ("colour", "memory:colour", None),
        ("team-only", "", "team"),
    ]:
        made[name] = create(admin_client, name=name, relation_prefix=prefix, scope=scope, ttl_seconds=60).json()
    admin_client.patch(f"{POLICIES}/{made['any']['id']}", {"enabled": False}, format="json")
    body = make_client(["read"]).get(POLICIES).json()
    assert [p["name"] for p in body["policies"]] == ["colour", "memory-team", "memory-any", "team-only", "any"]
    assert body["policies"][-1]["enabled"] is False
    assert all(set(p) == RECORD_KEYS for p in body["policies"])


def test_list_and_get_are_tenant_scoped(make_client):
    mine = create(make_client(["admin"]), ttl_seconds=60).json()
    acme = make_client(["read", "admin"], tenant="acme")
    assert acme.get(POLICIES).json() == {"policies": []}
    for method in ("get", "delete"):
        response = getattr(acme, method)(f"{POLICIES}/{mine['id']}")
        assert response.status_code == 404
        assert response.json() == {"detail": "policy not found"}
    response = acme.patch(f"{POLICIES}/{mine['id']}", {"ttl_seconds": 1}, format="json")
    assert response.status_code == 404
    assert DecayPolicy.objects.get(pk=mine["id"]).ttl_seconds == 60


def test_get_one(make_client):
    made = create(make_client(["admin"]), min_confidence=0.25).json()
    assert make_client(["read"]).get(f"{POLICIES}/{made['id']}").json() == made


@pytest.mark.parametrize("ref", ["999999", "abc", "0", "-1", "1.0", "99999999999999999999999"])
def test_unknown_policy_is_404(admin_client, ref):
    for method in ("get", "patch", "delete"):
        response = getattr(admin_client, method)(f"{POLICIES}/{ref}", {}, format="json")
        assert response.status_code == 404
        assert response.json() == {"detail": "policy not found"}


# --- update and delete -----------------------------------------------------------------------


def test_patch_changes_only_the_given_fields(admin_client):
    made = create(admin_client, name="p", relation_prefix="memory:", ttl_seconds=60).json()
    response = admin_client.patch(
        f"{POLICIES}/{made['id']}", {"half_life_seconds": 3600, "scope": "company"}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["relation_prefix"], body["scope"]) == ("p", "memory:", "company")
    assert (body["ttl_seconds"], body["half_life_seconds"]) == (60, 3600)
    assert body["updated_at"] >= made["updated_at"]
    assert admin_client.get(f"{POLICIES}/{made['id']}").json() == body
    [entry] = AuditEvent.objects.filter(event_type="decay_policy_updated")
    assert entry.detail["before"]["half_life_seconds"] is None
    assert entry.detail["after"]["half_life_seconds"] == 3600


def test_patch_may_not_remove_every_rule(admin_client):
    made = create(admin_client, ttl_seconds=60).json()
    before = (policy_rows(), audit_rows())
    response = admin_client.patch(f"{POLICIES}/{made['id']}", {"ttl_seconds": None}, format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert (policy_rows(), audit_rows()) == before


@pytest.mark.parametrize(
    "body", [{"ttl_seconds": -5}, {"half_life_seconds": 0}, {"name": None}, {"scope": "x"}, {"enabled": 1}]
)
def test_bad_patch_is_422_and_changes_nothing(admin_client, body):
    made = create(admin_client, ttl_seconds=60).json()
    before = (policy_rows(), audit_rows())
    response = admin_client.patch(f"{POLICIES}/{made['id']}", body, format="json")
    assert response.status_code == 422
    assert (policy_rows(), audit_rows()) == before


def test_patch_into_an_existing_match_is_409(admin_client):
    first = create(admin_client, relation_prefix="a", ttl_seconds=1).json()
    second = create(admin_client, relation_prefix="b", ttl_seconds=1).json()
    before = (policy_rows(), audit_rows())
    response = admin_client.patch(f"{POLICIES}/{second['id']}", {"relation_prefix": "a"}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": f"a policy with this relation_prefix and scope exists: {first['id']}"}
    assert (policy_rows(), audit_rows()) == before
    # Re-stating its own match is not a clash.
    assert admin_client.patch(f"{POLICIES}/{first['id']}", {"relation_prefix": "a"}, format="json").status_code == 200


def test_delete(admin_client):
    made = create(admin_client, ttl_seconds=60).json()
    response = admin_client.delete(f"{POLICIES}/{made['id']}")
    assert response.status_code == 204
    assert policy_rows() == []
    assert admin_client.get(f"{POLICIES}/{made['id']}").status_code == 404
    [entry] = AuditEvent.objects.filter(event_type="decay_policy_deleted")
    assert entry.target == str(made["id"])
    assert admin_client.delete(f"{POLICIES}/{made['id']}").status_code == 404


# --- permissions -----------------------------------------------------------------------------


def test_writes_need_admin_and_reads_need_read(make_client, anon):
    made = create(make_client(["admin"]), ttl_seconds=60).json()
    before = (policy_rows(), audit_rows())
    writer = make_client(["read", "write"])
    assert create(writer, ttl_seconds=1).status_code == 403
    assert writer.patch(f"{POLICIES}/{made['id']}", {"ttl_seconds": 1}, format="json").status_code == 403
    assert writer.delete(f"{POLICIES}/{made['id']}").status_code == 403
    assert writer.get(POLICIES).status_code == 200
    assert writer.get(f"{POLICIES}/{made['id']}").status_code == 200
    assert anon.get(POLICIES).status_code == 401
    assert anon.post(POLICIES, {"name": "x", "ttl_seconds": 1}, format="json").status_code == 401
    assert (policy_rows(), audit_rows()) == before


# --- effect on reads -------------------------------------------------------------------------


def test_a_new_half_life_policy_shows_at_once_in_effective_confidence(admin_client):
    [fact] = seed(count=1)
    assert admin_client.get(f"/v1/facts/{fact.id}").json()["effective_confidence"] is None
    made = create(admin_client, relation_prefix="memory:", half_life_seconds=10**9).json()
    effective = admin_client.get(f"/v1/facts/{fact.id}").json()["effective_confidence"]
    assert effective is not None and 0.89 < effective <= 0.9
    admin_client.patch(f"{POLICIES}/{made['id']}", {"enabled": False}, format="json")
    assert admin_client.get(f"/v1/facts/{fact.id}").json()["effective_confidence"] is None
