"""Tombstones (WIRE.md §4.3): the admin API, signatures, the suppression set and the admin pages."""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.contrib.admin.utils import quote as admin_quote
from django.contrib.messages import get_messages
from django.db import connection
from django.urls import reverse

from stigmem import signing, tombstones
from stigmem.models import AuditEvent, Fact, NodeClock, Tombstone, TombstoneRevocation
from stigmem.node import node_id
from stigmem.tombstones import (
    active_tombstones,
    create_tombstone,
    is_suppressed,
    suppression_q,
    verify_revocation,
    verify_tombstone,
)
from tests.core import tombstone_processes

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "stigmem://test/agent/admin"
ERIN = "stigmem://test/user/erin"
TOMBSTONE_KEYS = {"id", "entity_uri", "scope", "reason", "signed_by", "key_id", "signature", "created_at", "legal_hold"}
REVOCATION_KEYS = {
    "id",
    "tombstone_id",
    "reason",
    "revoked_by",
    "signed_by",
    "key_id",
    "signature",
    "revoked_at",
    "created_at",
}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def counts() -> tuple[int, int, int]:
    return Tombstone.objects.count(), TombstoneRevocation.objects.count(), AuditEvent.objects.count()


def status_url(entity: str) -> str:
    return f"/v1/tombstones/{quote(entity, safe='')}"


def create(client, **body):
    return client.post("/v1/tombstones", {"entity_uri": ERIN, "scope": "*", **body}, format="json")


def revoke(client, tombstone_id: str, reason="a mistake"):
    return client.post(f"/v1/tombstones/{tombstone_id}/revoke", {"reason": reason}, format="json")


# Verification the way a peer does it: only the `cryptography` package and the published key.


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def peer_verifies(record: dict, fields: tuple[str, ...], public_key_b64: str) -> bool:
    key = Ed25519PublicKey.from_public_bytes(_b64decode(public_key_b64))
    try:
        key.verify(_b64decode(record["signature"]), _canonical({name: record[name] for name in fields}))
    except InvalidSignature:
        return False
    return True


TOMBSTONE_FIELDS = ("id", "entity_uri", "scope", "signed_by", "key_id", "created_at", "legal_hold")
REVOCATION_FIELDS = ("id", "tombstone_id", "revoked_by", "signed_by", "key_id", "revoked_at")


# --- create -----------------------------------------------------------------------------------


def test_create_returns_the_signed_record(admin_client):
    response = create(
        admin_client, entity_uri="  Stigmem://Test/User/Erin  Smith ", scope="company", reason="erasure request"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == TOMBSTONE_KEYS
    assert re.fullmatch(rf"tomb_{UUID}", body["id"])
    assert body["entity_uri"] == "stigmem://test/user/erin-smith"  # normalized like a fact's entity
    assert body["scope"] == "company"
    assert body["reason"] == "erasure request"
    assert body["legal_hold"] is False
    assert body["signed_by"] == node_id()
    assert body["key_id"] == signing.key_id()
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}", body["signature"])
    created_at = datetime.fromisoformat(body["created_at"])
    assert body["created_at"].endswith("+00:00") and created_at.utcoffset().total_seconds() == 0

    stored = Tombstone.objects.get(pk=body["id"])
    assert (stored.tenant, stored.entity_uri, stored.created_at_text) == (
        "default",
        body["entity_uri"],
        body["created_at"],
    )
    assert stored.created_at == created_at
    assert stored.origin_node_id is None
    entry = AuditEvent.objects.get(event_type="tombstone_created")
    assert (entry.tenant, entry.actor, entry.target) == ("default", ADMIN, body["id"])
    assert entry.detail == {"entity_uri": "stigmem://test/user/erin-smith", "scope": "company", "legal_hold": False}


def test_scope_defaults_to_every_scope_and_reason_to_null(admin_client):
    response = admin_client.post("/v1/tombstones", {"entity_uri": ERIN, "legal_hold": True}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["scope"], body["reason"], body["legal_hold"]) == ("*", None, True)


def test_the_signature_verifies_with_the_node_key_and_cryptography_alone(admin_client):
    record = create(admin_client, entity_uri="stigmem://test/user/zoë", scope="team").json()
    public = signing.public_key_b64()

    assert peer_verifies(record, TOMBSTONE_FIELDS, public)
    assert verify_tombstone(record, public)
    assert verify_tombstone(Tombstone.objects.get(pk=record["id"]), public)
    # The reason is not signed (it may be redacted before replication).
    assert verify_tombstone({**record, "reason": "redacted"}, public)


@pytest.mark.parametrize(
    "tampered",
    [
        {"entity_uri": "stigmem://test/user/someone-else"},
        {"scope": "company"},
        {"legal_hold": True},
        {"created_at": "2020-01-01T00:00:00+00:00"},
        {"signed_by": "stigmem:node:impostor"},
        {"id": "tomb_00000000-0000-4000-8000-000000000000"},
    ],
)
def test_a_tampered_tombstone_does_not_verify(admin_client, tampered):
    record = create(admin_client).json()
    forged = {**record, **tampered}

    assert not peer_verifies(forged, TOMBSTONE_FIELDS, signing.public_key_b64())
    assert not verify_tombstone(forged, signing.public_key_b64())


def test_verification_refuses_other_keys_and_malformed_records(admin_client):
    record = create(admin_client).json()
    public = signing.public_key_b64()
    other_key = base64.urlsafe_b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    flipped = bytearray(_b64decode(record["signature"]))
    flipped[0] ^= 1

    assert not verify_tombstone(record, other_key)
    assert not verify_tombstone({**record, "signature": base64.urlsafe_b64encode(bytes(flipped)).decode()}, public)
    assert not verify_tombstone({**record, "key_id": "0" * 16}, public)  # not the key that signed it
    assert not verify_tombstone({k: v for k, v in record.items() if k != "scope"}, public)
    assert not verify_tombstone({**record, "signature": None}, public)
    assert not verify_tombstone([], public)
    assert not verify_tombstone(record, "not a key")


def test_creating_the_same_active_tombstone_again_returns_the_existing_one(admin_client):
    first = create(admin_client, reason="first").json()
    before = counts()

    again = create(admin_client, entity_uri="stigmem://TEST/user/Erin", reason="second", legal_hold=True)

    assert again.status_code == 201
    assert again.json() == first
    assert counts() == before  # no row, no audit entry


def test_a_different_scope_tenant_or_a_revoked_one_gives_a_new_tombstone(admin_client, make_client):
    first = create(admin_client, scope="company").json()
    other_scope = create(admin_client, scope="public").json()
    other_tenant = create(make_client(["admin"], tenant="acme"), scope="company").json()
    assert len({first["id"], other_scope["id"], other_tenant["id"]}) == 3

    assert revoke(admin_client, first["id"]).status_code == 200
    renewed = create(admin_client, scope="company").json()
    assert renewed["id"] not in {first["id"], other_scope["id"]}
    assert Tombstone.objects.count() == 4


def test_a_peer_tombstone_does_not_stand_in_for_a_local_one(admin_client):
    peer = Tombstone.objects.create(
        id="tomb_peer",
        tenant="default",
        entity_uri=ERIN,
        scope="*",
        signed_by="stigmem:node:peer",
        key_id="0" * 16,
        signature="x",
        created_at=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
        created_at_text="2026-01-01T00:00:00+00:00",
        origin_node_id="stigmem:node:peer",
    )

    local = create(admin_client).json()

    assert local["id"] != peer.id and local["signed_by"] == node_id()


# --- bad input: exact answer, nothing written --------------------------------------------------


def _invalid(loc: list[str], type_: str) -> tuple[int, dict]:
    return 422, {"loc": loc, "type": type_}


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"entity_uri": ERIN, "scope": "galaxy"}, 400, {"detail": "tombstone_invalid_scope"}),
        ({"entity_uri": ERIN, "scope": ""}, 400, {"detail": "tombstone_invalid_scope"}),
        ({"entity_uri": "   "}, 400, {"detail": {"code": "invalid_entity_uri", "message": None}}),
        ({"entity_uri": "stigmem://test/ /erin"}, 400, {"detail": {"code": "invalid_entity_uri", "message": None}}),
        ({"scope": "*"}, *_invalid(["body", "entity_uri"], "string_type")),
        ({"entity_uri": ""}, *_invalid(["body", "entity_uri"], "string_type")),
        ({"entity_uri": 42}, *_invalid(["body", "entity_uri"], "string_type")),
        ({"entity_uri": "stigmem://t/u/" + "x" * 600}, *_invalid(["body", "entity_uri"], "string_too_long")),
        ({"entity_uri": "stigmem://t/u/a\x00b"}, *_invalid(["body", "entity_uri"], "string_unicode")),
        ({"entity_uri": ERIN, "scope": 3}, *_invalid(["body", "scope"], "string_type")),
        ({"entity_uri": ERIN, "scope": None}, *_invalid(["body", "scope"], "string_type")),
        ({"entity_uri": ERIN, "reason": ["why"]}, *_invalid(["body", "reason"], "string_type")),
        ({"entity_uri": ERIN, "reason": "x" * 2001}, *_invalid(["body", "reason"], "string_too_long")),
        ({"entity_uri": ERIN, "legal_hold": "yes"}, *_invalid(["body", "legal_hold"], "bool_type")),
        ({"entity_uri": ERIN, "legal_hold": 1}, *_invalid(["body", "legal_hold"], "bool_type")),
        (["not", "an", "object"], *_invalid(["body"], "dict_type")),
    ],
)
def test_bad_create_bodies_change_nothing(admin_client, body, status, expected):
    before = counts()

    response = admin_client.post("/v1/tombstones", body, format="json")

    assert response.status_code == status, response.content
    detail = response.json()["detail"]
    if status == 422:
        assert len(detail) == 1
        assert {k: detail[0][k] for k in ("loc", "type")} == expected
        assert detail[0]["msg"]
    elif isinstance(expected["detail"], dict):
        assert detail["code"] == expected["detail"]["code"] and detail["message"]
    else:
        assert response.json() == expected
    assert counts() == before


def test_the_first_of_several_problems_to_be_reported_is_the_typing(admin_client):
    # Like the reference: field validation (422) before the scope check (400).
    response = admin_client.post("/v1/tombstones", {"scope": "galaxy", "legal_hold": "no"}, format="json")

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "entity_uri"], ["body", "legal_hold"]]


def test_malformed_json_is_422(admin_client):
    before = counts()

    response = admin_client.generic("POST", "/v1/tombstones", "{not json", content_type="application/json")

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert counts() == before


# --- status -----------------------------------------------------------------------------------


def test_status_lists_tombstones_and_revocations(admin_client):
    everywhere = create(admin_client, scope="*").json()
    company = create(admin_client, scope="company").json()

    active = admin_client.get(status_url(ERIN))
    assert active.status_code == 200
    assert active.json() == {"tombstoned": True, "tombstones": [everywhere, company], "revocations": []}

    first_revocation = revoke(admin_client, everywhere["id"]).json()
    still = admin_client.get(status_url(ERIN)).json()
    assert still == {"tombstoned": True, "tombstones": [everywhere, company], "revocations": [first_revocation]}

    second_revocation = revoke(admin_client, company["id"]).json()
    lifted = admin_client.get(status_url(ERIN)).json()
    assert lifted["tombstoned"] is False
    assert lifted["revocations"] == [first_revocation, second_revocation]


def test_status_path_may_be_encoded_unencoded_or_unnormalized(admin_client):
    record = create(admin_client).json()
    expected = {"tombstoned": True, "tombstones": [record], "revocations": []}

    assert admin_client.get(status_url(ERIN)).json() == expected
    assert admin_client.get(f"/v1/tombstones/{ERIN}").json() == expected  # slashes and ':' as they are
    assert admin_client.get(status_url(" STIGMEM://Test/User/ERIN ")).json() == expected


@pytest.mark.parametrize("entity", ["user:x/revoke", "agent/revoke", "stigmem://test/user/revoke"])
def test_status_of_an_entity_ending_in_revoke_is_not_taken_for_a_revocation(admin_client, entity):
    record = create(admin_client, entity_uri=entity).json()

    response = admin_client.get(status_url(entity))

    assert response.status_code == 200
    assert response.json() == {"tombstoned": True, "tombstones": [record], "revocations": []}


@pytest.mark.parametrize("entity", ["stigmem://test/user/nobody", "   ", "a\x00b", "x" * 2000])
def test_status_of_an_unknown_entity_is_empty(admin_client, entity):
    create(admin_client)

    response = admin_client.get(status_url(entity))

    assert response.status_code == 200
    assert response.json() == {"tombstoned": False, "tombstones": [], "revocations": []}


def test_status_never_shows_another_tenants_tombstones(admin_client, make_client):
    create(make_client(["admin"], tenant="acme"))

    response = admin_client.get(status_url(ERIN))

    assert response.json() == {"tombstoned": False, "tombstones": [], "revocations": []}


# --- revoke -----------------------------------------------------------------------------------


def test_revoke_returns_the_signed_revocation(admin_client):
    tombstone = create(admin_client).json()

    response = revoke(admin_client, tombstone["id"], reason="court order lifted")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == REVOCATION_KEYS
    assert re.fullmatch(rf"tombrevoke_{UUID}", body["id"])
    assert body["tombstone_id"] == tombstone["id"]
    assert body["reason"] == "court order lifted"
    assert body["revoked_by"] == ADMIN
    assert body["signed_by"] == node_id()
    assert body["key_id"] == signing.key_id()
    assert body["created_at"] == body["revoked_at"]
    assert datetime.fromisoformat(body["revoked_at"]) >= datetime.fromisoformat(tombstone["created_at"])
    public = signing.public_key_b64()
    assert peer_verifies(body, REVOCATION_FIELDS, public)
    assert verify_revocation(body, public)
    assert verify_revocation(TombstoneRevocation.objects.get(pk=body["id"]), public)
    for tampered in ({"tombstone_id": "tomb_other"}, {"revoked_by": "user:mallory"}, {"revoked_at": "2020"}):
        assert not peer_verifies({**body, **tampered}, REVOCATION_FIELDS, public)
        assert not verify_revocation({**body, **tampered}, public)
    entry = AuditEvent.objects.get(event_type="tombstone_revoked")
    assert (entry.tenant, entry.actor, entry.target) == ("default", ADMIN, tombstone["id"])
    assert entry.detail == {"revocation_id": body["id"], "entity_uri": ERIN, "scope": "*"}


def test_revoking_twice_is_409_and_changes_nothing(admin_client):
    tombstone = create(admin_client).json()
    revoke(admin_client, tombstone["id"])
    before = counts()

    response = revoke(admin_client, tombstone["id"], reason="again")

    assert response.status_code == 409
    assert response.json() == {"detail": "tombstone_already_revoked"}
    assert counts() == before
    assert TombstoneRevocation.objects.get().reason == "a mistake"


@pytest.mark.parametrize("tombstone_id", ["tomb_00000000-0000-4000-8000-000000000000", "nope", "a%00b", "t" * 60])
def test_revoking_an_unknown_tombstone_is_404(admin_client, tombstone_id):
    create(admin_client)
    before = counts()

    response = revoke(admin_client, tombstone_id)

    assert response.status_code == 404
    assert response.json() == {"detail": "tombstone not found"}
    assert counts() == before


def test_revoking_another_tenants_tombstone_is_404(admin_client, make_client):
    theirs = create(make_client(["admin"], tenant="acme")).json()
    before = counts()

    response = revoke(admin_client, theirs["id"])

    assert response.status_code == 404
    assert response.json() == {"detail": "tombstone not found"}
    assert counts() == before
    assert is_suppressed("acme", ERIN, "local")


@pytest.mark.parametrize(
    ("body", "type_"),
    [
        ({}, "string_type"),
        ({"reason": ""}, "string_type"),
        ({"reason": 7}, "string_type"),
        ({"reason": "x" * 2001}, "string_too_long"),
    ],
)
def test_bad_revoke_bodies_change_nothing(admin_client, body, type_):
    tombstone = create(admin_client).json()
    before = counts()

    response = admin_client.post(f"/v1/tombstones/{tombstone['id']}/revoke", body, format="json")

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body", "reason"], type_)]
    assert counts() == before
    assert is_suppressed("default", ERIN, "local")


# --- permissions ------------------------------------------------------------------------------


def test_non_admins_get_403_and_change_nothing(admin_client, make_client):
    tombstone = create(admin_client).json()
    writer = make_client(["read", "write", "federate", "audit.read", "admin:federation"])
    before = counts()

    answers = [
        create(writer, entity_uri="stigmem://test/user/other"),
        writer.get(status_url(ERIN)),
        writer.get(status_url("user:x/revoke")),
        revoke(writer, tombstone["id"]),
    ]

    for response in answers:
        assert response.status_code == 403
        assert response.json() == {"detail": "admin permission required"}
    assert counts() == before


def test_anonymous_callers_get_401(admin_client, anon):
    tombstone = create(admin_client).json()
    before = counts()

    for response in (create(anon), anon.get(status_url(ERIN)), revoke(anon, tombstone["id"])):
        assert response.status_code == 401
    assert counts() == before


# --- suppression service ----------------------------------------------------------------------


def test_creation_and_revocation_are_visible_at_once_in_this_process(admin_client):
    assert not is_suppressed("default", ERIN, "company")  # loads (and caches) the empty set

    tombstone = create(admin_client, scope="company").json()

    assert is_suppressed("default", ERIN, "company")
    assert not is_suppressed("default", ERIN, "local")
    assert not is_suppressed("acme", ERIN, "company")
    assert active_tombstones("default") == frozenset({(ERIN, "company")})

    revoke(admin_client, tombstone["id"])

    assert not is_suppressed("default", ERIN, "company")
    assert active_tombstones("default") == frozenset()


def test_a_change_is_visible_after_commit_callbacks_too(admin_client, django_capture_on_commit_callbacks):
    assert not is_suppressed("default", ERIN, "team")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        create(admin_client)
    assert callbacks  # the commit-time invalidation ran
    assert is_suppressed("default", ERIN, "team")


def test_every_scope_tombstone_hides_all_scopes(db):
    create_tombstone(tenant="default", entity_uri=ERIN, scope="*", actor=ADMIN)

    for scope in ("local", "team", "company", "public"):
        assert is_suppressed("default", ERIN, scope)
    assert not is_suppressed("default", "stigmem://test/user/frank", "local")


@pytest.fixture
def cache_clock(monkeypatch):
    """The suppression cache's clock, advanced by hand."""
    now = [1000.0]
    monkeypatch.setattr(tombstones._cache, "clock", lambda: now[0])
    return now


def _written_by_another_process(tenant: str = "default") -> Tombstone:
    # A row committed elsewhere: this process's cache hears nothing about it.
    return Tombstone.objects.create(
        id="tomb_elsewhere",
        tenant=tenant,
        entity_uri=ERIN,
        scope="*",
        signed_by="stigmem:node:x",
        key_id="0" * 16,
        signature="x",
        created_at=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
        created_at_text="2026-01-01T00:00:00+00:00",
    )


def test_another_processs_change_is_seen_once_the_cache_expires(db, settings, cache_clock):
    settings.STIGMEM_TOMBSTONE_CACHE_S = 2.0
    assert not is_suppressed("default", ERIN, "local")

    elsewhere = _written_by_another_process()
    cache_clock[0] += 1.9
    assert not is_suppressed("default", ERIN, "local")  # still the cached view
    cache_clock[0] += 0.1
    assert is_suppressed("default", ERIN, "local")

    TombstoneRevocation.objects.create(
        id="tombrevoke_elsewhere",
        tombstone=elsewhere,
        reason="r",
        revoked_by="x",
        signed_by="x",
        key_id="0" * 16,
        signature="x",
        revoked_at=elsewhere.created_at,
        revoked_at_text=elsewhere.created_at_text,
    )
    assert is_suppressed("default", ERIN, "local")
    cache_clock[0] += 2.0
    assert not is_suppressed("default", ERIN, "local")


def test_a_zero_ttl_never_caches(db, settings, cache_clock):
    settings.STIGMEM_TOMBSTONE_CACHE_S = 0
    assert not is_suppressed("default", ERIN, "local")

    _written_by_another_process()

    assert is_suppressed("default", ERIN, "local")


def test_a_set_loaded_while_a_change_happens_is_not_kept(db, cache_clock, monkeypatch):
    # A reader loads the set, and this process changes the tombstones before that load is stored:
    # the stale set must not be cached over the change.
    real_values_list = type(Tombstone.objects.all()).values_list

    def racing_values_list(queryset, *fields, **kwargs):
        rows = list(real_values_list(queryset, *fields, **kwargs))
        monkeypatch.setattr(type(queryset), "values_list", real_values_list)
        create_tombstone(tenant="default", entity_uri=ERIN, scope="*", actor=ADMIN)
        return rows

    monkeypatch.setattr(type(Tombstone.objects.all()), "values_list", racing_values_list)

    assert active_tombstones("default") == frozenset()  # the stale answer of the racing load
    assert active_tombstones("default") == frozenset({(ERIN, "*")})


def _fact(client, entity: str, scope: str, relation: str = "memory:color") -> None:
    body = {"entity": entity, "relation": relation, "value": {"type": "string", "v": scope}, "source": ADMIN}
    response = client.post("/v1/facts", {**body, "scope": scope}, format="json")
    assert response.status_code == 201, response.content


def test_suppression_q_matches_exactly_the_suppressed_facts(client, admin_client, make_client):
    frank = "stigmem://test/user/frank"
    gina = "stigmem://test/user/gina"
    for entity in (ERIN, frank, gina):
        for scope in ("local", "company"):
            _fact(client, entity, scope)
    assert suppression_q("default") is None

    create(admin_client, entity_uri=ERIN, scope="*")
    create(admin_client, entity_uri=frank, scope="company")
    create(admin_client, entity_uri=gina, scope="team")
    create(make_client(["admin"], tenant="acme"), entity_uri=gina, scope="*")

    q = suppression_q("default")
    kept = Fact.objects.filter(tenant="default").exclude(q)
    assert sorted(kept.values_list("entity", "scope")) == [(frank, "local"), (gina, "company"), (gina, "local")]
    hidden = Fact.objects.filter(tenant="default").filter(q)
    assert sorted(hidden.values_list("entity", "scope")) == [(ERIN, "company"), (ERIN, "local"), (frank, "company")]
    for entity, scope in Fact.objects.filter(tenant="default").values_list("entity", "scope"):
        assert is_suppressed("default", entity, scope) == hidden.filter(entity=entity, scope=scope).exists()


# --- concurrency ------------------------------------------------------------------------------


def test_racing_processes_agree_on_one_key_and_one_tombstone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STIGMEM_DB_PATH", "STIGMEM_DATA_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    module = [sys.executable, "-m", "tests.core.tombstone_processes"]
    migrated = subprocess.run([*module, "migrate", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [*module, "race", str(tmp_path), str(go)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=tombstone_processes.WAIT_S)
        assert racer.returncode == 0, err
        results.append(json.loads(out))

    assert len({r["public_key"] for r in results}) == 1
    assert len({r["tombstone_id"] for r in results}) == 1
    assert sorted(r["created"] for r in results) == [False, False, False, True]
    with sqlite3.connect(tmp_path / "stigmem.db") as db:
        (stored_key,) = db.execute("SELECT signing_key FROM stigmem_nodeidentity").fetchone()
        rows = db.execute("SELECT id FROM stigmem_tombstone").fetchall()
    public = Ed25519PrivateKey.from_private_bytes(_b64decode(stored_key)).public_key().public_bytes_raw()
    assert base64.urlsafe_b64encode(public).decode().rstrip("=") == results[0]["public_key"]
    assert rows == [(results[0]["tombstone_id"],)]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_store_one_tombstone_on_postgres():
    NodeClock.objects.get_or_create(pk=1)  # a transactional test empties tables, the clock row included
    signing.public_key_b64()  # the key race is the SQLite test's; here only the tombstone races
    barrier = threading.Barrier(6, timeout=60)
    results: list = []
    errors: list = []

    def racer():
        try:
            barrier.wait()
            results.append(create_tombstone(tenant="default", entity_uri=ERIN, scope="public", actor=ADMIN))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert len({tombstone.id for tombstone, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 5 + [True]
    assert Tombstone.objects.count() == 1
    assert AuditEvent.objects.filter(event_type="tombstone_created").count() == 1


# --- admin ------------------------------------------------------------------------------------


def admin_url(model, page: str, *args) -> str:
    # Quoted like the admin's own links: "tomb_25..." would otherwise be unquoted to another id.
    return reverse(f"admin:stigmem_{model._meta.model_name}_{page}", args=[admin_quote(a) for a in args])


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def shown_signature_check(page) -> str:
    """The boolean the change page shows for "signature valid (node key)"."""
    assert page.status_code == 200
    match = re.search(
        r'field-signature_valid.*?<div class="readonly"><img [^>]*alt="(\w+)"', page.content.decode(), re.S
    )
    assert match, page.content
    return match.group(1)


def test_admin_creates_a_signed_tombstone(browser):
    form = {"tenant": "default", "entity_uri": " Stigmem://Test/User/Erin ", "scope": "company", "reason": "ticket 7"}

    response = browser.post(admin_url(Tombstone, "add"), form, follow=True)

    assert response.status_code == 200
    tombstone = Tombstone.objects.get()
    assert (tombstone.entity_uri, tombstone.scope, tombstone.reason) == (ERIN, "company", "ticket 7")
    assert tombstone.signed_by == node_id()
    assert verify_tombstone(tombstone, signing.public_key_b64())
    assert AuditEvent.objects.get(event_type="tombstone_created").actor == "admin:root"
    assert is_suppressed("default", ERIN, "company")

    again = browser.post(admin_url(Tombstone, "add"), form, follow=True)
    assert any("already tombstones" in m for m in messages_of(again))
    assert Tombstone.objects.count() == 1


def test_admin_links_reach_ids_that_the_admin_must_quote(browser, monkeypatch):
    # In admin URLs "_25" stands for "%": the admin's own links must quote "tomb_25..." to reach it.
    monkeypatch.setattr(tombstones.uuid, "uuid4", lambda: uuid.UUID("25000000-0000-4000-8000-000000000000"))
    tombstone, _ = create_tombstone(tenant="default", entity_uri=ERIN, scope="*", actor=ADMIN)
    monkeypatch.undo()

    changelist = browser.get(admin_url(Tombstone, "changelist")).content.decode()
    link = re.search(r'href="(/admin/stigmem/tombstone/[^"]+/change/)', changelist).group(1)
    page = browser.get(link)

    assert page.status_code == 200
    assert page.context["original"].pk == tombstone.pk == "tomb_25000000-0000-4000-8000-000000000000"


def test_admin_refuses_a_malformed_entity(browser):
    response = browser.post(admin_url(Tombstone, "add"), {"tenant": "default", "entity_uri": "  ", "scope": "*"})

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert counts() == (0, 0, 0)


def test_admin_pages_show_the_signature_check(browser, admin_client):
    record = create(admin_client).json()
    revocation = revoke(admin_client, record["id"]).json()

    changelist = browser.get(admin_url(Tombstone, "changelist"), {"status": "revoked"})
    assert changelist.status_code == 200
    assert [t.pk for t in changelist.context["cl"].result_list] == [record["id"]]
    assert browser.get(admin_url(Tombstone, "changelist"), {"status": "active"}).context["cl"].result_count == 0
    assert shown_signature_check(browser.get(admin_url(Tombstone, "change", record["id"]))) == "True"
    revocations = browser.get(admin_url(TombstoneRevocation, "changelist"))
    assert [r.pk for r in revocations.context["cl"].result_list] == [revocation["id"]]
    assert shown_signature_check(browser.get(admin_url(TombstoneRevocation, "change", revocation["id"]))) == "True"
    assert browser.get(admin_url(TombstoneRevocation, "add")).status_code == 403

    Tombstone.objects.filter(pk=record["id"]).update(legal_hold=True)  # edited behind the node's back
    TombstoneRevocation.objects.filter(pk=revocation["id"]).update(revoked_by="user:mallory")
    assert shown_signature_check(browser.get(admin_url(Tombstone, "change", record["id"]))) == "False"
    assert shown_signature_check(browser.get(admin_url(TombstoneRevocation, "change", revocation["id"]))) == "False"


def test_admin_revoke_action_needs_a_reason_and_signs(browser, admin_client):
    record = create(admin_client).json()
    action = {"action": "revoke_tombstones", "_selected_action": [record["id"]], "index": 0}
    before = counts()

    refused = browser.post(admin_url(Tombstone, "changelist"), {**action, "reason": " "}, follow=True)
    assert any("reason" in m for m in messages_of(refused))
    assert counts() == before

    done = browser.post(admin_url(Tombstone, "changelist"), {**action, "reason": "lifted"}, follow=True)
    assert any("Revoked 1 tombstone" in m for m in messages_of(done))
    revocation = TombstoneRevocation.objects.get()
    assert (revocation.reason, revocation.revoked_by) == ("lifted", "admin:root")
    assert verify_revocation(revocation, signing.public_key_b64())
    assert not is_suppressed("default", ERIN, "local")


def test_admin_verify_action_reports_a_tampered_row(browser, admin_client):
    good = create(admin_client).json()
    bad = create(admin_client, entity_uri="stigmem://test/user/frank").json()
    Tombstone.objects.filter(pk=bad["id"]).update(scope="company")  # edited behind the node's back
    action = {"action": "verify_signatures", "_selected_action": [good["id"], bad["id"]], "index": 0}

    response = browser.post(admin_url(Tombstone, "changelist"), action, follow=True)

    assert messages_of(response) == [f"Invalid signature: {bad['id']}"]
    only_good = browser.post(
        admin_url(Tombstone, "changelist"), {**action, "_selected_action": [good["id"]]}, follow=True
    )
    assert messages_of(only_good) == ["All 1 signature(s) of this node's tombstones are valid."]


def test_admin_never_edits_or_deletes_tombstones(browser, admin_client):
    record = create(admin_client).json()

    assert browser.post(admin_url(Tombstone, "change", record["id"]), {"scope": "team"}).status_code == 403
    assert browser.post(admin_url(Tombstone, "delete", record["id"]), {"post": "yes"}).status_code == 403
    assert Tombstone.objects.get().scope == "*"
