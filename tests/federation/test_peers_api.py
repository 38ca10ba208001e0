"""The peers API (WIRE.md §6.2): validation, approval by fingerprint, status changes, listing, tenancy."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
import responses

from federation.handshake import fingerprint
from federation.models import Peer
from stigmem.models import AuditEvent
from tests.federation.declarations import RemoteNode

PEERS = "/v1/federation/peers"


@pytest.fixture
def operator(make_client):
    return make_client(["admin:federation", "federate"], entity="stigmem://test/agent/operator")


def federation_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.exclude(event_type="api_key_created").order_by("id"))


def action(peer_id: str, name: str) -> str:
    return f"{PEERS}/{peer_id}/{name}"


def register(client, mock: responses.RequestsMock, remote: RemoteNode | None = None) -> tuple[RemoteNode, str]:
    """A remote registered through the API (pending approval), and its peer id."""
    remote = remote or RemoteNode()
    remote.serve_well_known(mock)
    response = client.post(PEERS, remote.declaration(), format="json")
    assert response.json()["status"] == "pending_approval", response.content
    return remote, response.json()["peer_id"]


@pytest.fixture
def pending(operator, remote_http) -> tuple[RemoteNode, str]:
    return register(operator, remote_http)


def approve(client, peer_id: str, supplied: str):
    return client.post(action(peer_id, "approve"), {"pubkey_fingerprint": supplied}, format="json")


@pytest.fixture
def active(operator, pending) -> str:
    remote, peer_id = pending
    assert approve(operator, peer_id, fingerprint(remote.pubkey)).status_code == 200
    return peer_id


# --- federation off -------------------------------------------------------------------------------


def test_every_peer_endpoint_is_404_while_federation_is_off(settings, operator, anon, pending):
    settings.STIGMEM_FEDERATION_ENABLED = False
    _, peer_id = pending
    before = AuditEvent.objects.count()
    for client in (operator, anon):
        assert client.get(PEERS).status_code == 404
        assert client.post(PEERS, RemoteNode().declaration(), format="json").status_code == 404
        for name in ("approve", "suspend", "resume", "revoke"):
            response = client.post(action(peer_id, name), {"pubkey_fingerprint": "x"}, format="json")
            assert response.status_code == 404
            assert response.json() == {"detail": "federation is not enabled on this node"}
    assert Peer.objects.get().status == "pending_approval"
    assert AuditEvent.objects.count() == before


# --- permissions ----------------------------------------------------------------------------------


def test_listing_and_registering_need_federate(make_client, remote_http):
    reader = make_client(["read", "write"])
    assert reader.get(PEERS).status_code == 403
    response = reader.post(PEERS, RemoteNode().declaration(), format="json")
    assert response.status_code == 403
    assert response.json() == {"detail": "federate permission required"}
    assert not Peer.objects.exists()
    assert not remote_http.calls


def test_unauthenticated_callers_get_401(settings, anon):
    settings.STIGMEM_AUTH_REQUIRED = True
    response = anon.get(PEERS)
    assert response.status_code == 401


def test_peer_actions_need_admin_federation(make_client, pending):
    remote, peer_id = pending
    federator = make_client(["federate", "read", "write"])
    for name in ("approve", "suspend", "resume", "revoke"):
        response = federator.post(action(peer_id, name), {"pubkey_fingerprint": fingerprint(remote.pubkey)})
        assert response.status_code == 403
        assert response.json() == {"detail": "admin:federation permission required"}
    assert Peer.objects.get().status == "pending_approval"
    assert [e.event_type for e in federation_events()] == ["peer_registered"]


def test_a_tenant_admin_may_act_on_peers(make_client, pending):
    remote, peer_id = pending
    admin = make_client(["admin"])
    assert approve(admin, peer_id, fingerprint(remote.pubkey)).status_code == 200


# --- approve --------------------------------------------------------------------------------------


def test_approve_with_the_right_fingerprint_activates_the_peer(operator, pending):
    remote, peer_id = pending
    response = approve(operator, peer_id, fingerprint(remote.pubkey))

    assert response.status_code == 200, response.content
    peer = Peer.objects.get()
    body = response.json()
    assert {k: body[k] for k in ("peer_id", "node_id", "status")} == {
        "peer_id": peer_id,
        "node_id": remote.node_id,
        "status": "active",
    }
    assert datetime.fromisoformat(body["approved_at"]) == peer.established_at
    assert peer.status == "active"
    assert peer.approved_by == "stigmem://test/agent/operator"
    assert peer.status_changed_at == peer.established_at
    # Due for a pull right away.
    assert peer.next_pull_at == peer.established_at
    event = federation_events()[-1]
    assert (event.event_type, event.actor, event.target) == (
        "peer_approved",
        "stigmem://test/agent/operator",
        peer_id,
    )
    assert event.detail["pubkey_fingerprint"] == fingerprint(remote.pubkey)


def test_approve_tolerates_case_and_surrounding_blanks(operator, pending):
    remote, peer_id = pending
    assert approve(operator, peer_id, f"  {fingerprint(remote.pubkey).upper()}\n").status_code == 200


@pytest.mark.parametrize(
    "supplied",
    [
        fingerprint("A" * 43),
        "sha256:" + "0" * 64,
        "",
        "not a fingerprint at all",
    ],
)
def test_approve_with_another_fingerprint_is_400_and_audited(operator, pending, supplied):
    _, peer_id = pending
    response = approve(operator, peer_id, supplied)
    assert response.status_code == 400
    assert response.json() == {"detail": "fingerprint mismatch"}
    peer = Peer.objects.get()
    assert (peer.status, peer.established_at, peer.approved_by) == ("pending_approval", None, "")
    events = federation_events()
    assert [e.event_type for e in events] == ["peer_registered", "peer_approval_failed"]
    assert (events[-1].target, events[-1].detail["supplied"]) == (peer_id, supplied)


def test_approving_another_tenants_peer_is_404(make_client, pending):
    remote, peer_id = pending
    stranger = make_client(["admin:federation"], tenant="acme")
    response = approve(stranger, peer_id, fingerprint(remote.pubkey))
    assert response.status_code == 404
    assert response.json() == {"detail": "peer not found"}
    assert Peer.objects.get().status == "pending_approval"
    assert [e.event_type for e in federation_events()] == ["peer_registered"]


@pytest.mark.parametrize("peer_id", [str(uuid.uuid4()), "not-a-uuid", "%00"])
def test_approving_an_unknown_peer_is_404(operator, peer_id):
    response = approve(operator, peer_id, "sha256:00")
    assert response.status_code == 404
    assert not federation_events()


def test_approving_a_peer_that_is_not_pending_is_409(operator, pending, remote_http):
    remote, peer_id = pending
    assert approve(operator, peer_id, fingerprint(remote.pubkey)).status_code == 200
    again = approve(operator, peer_id, fingerprint(remote.pubkey))
    assert again.status_code == 409
    assert again.json() == {"detail": "peer is not pending approval (status=active)"}

    rejected = RemoteNode()
    remote_http.add(responses.GET, f"{rejected.url}/.well-known/stigmem", status=500)
    rejected_id = operator.post(PEERS, rejected.declaration(), format="json").json()["peer_id"]
    response = approve(operator, rejected_id, fingerprint(rejected.pubkey))
    assert response.status_code == 409
    assert response.json() == {"detail": "peer is not pending approval (status=rejected)"}
    assert Peer.objects.get(pk=rejected_id).status == "rejected"


@pytest.mark.parametrize(
    "body, loc, type_",
    [
        ({}, ["body", "pubkey_fingerprint"], "missing"),
        ({"pubkey_fingerprint": 12}, ["body", "pubkey_fingerprint"], "string_type"),
        ({"pubkey_fingerprint": None}, ["body", "pubkey_fingerprint"], "string_type"),
        ({"pubkey_fingerprint": "sha256:\x00"}, ["body", "pubkey_fingerprint"], "value_error"),
        ({"pubkey_fingerprint": "x" * 10_000}, ["body", "pubkey_fingerprint"], "value_error"),
        (["sha256:00"], ["body"], "dict_type"),
    ],
)
def test_approve_body_validation_is_422(operator, pending, body, loc, type_):
    _, peer_id = pending
    response = operator.post(action(peer_id, "approve"), body, format="json")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["type"]) == (loc, type_)
    assert Peer.objects.get().status == "pending_approval"
    assert [e.event_type for e in federation_events()] == ["peer_registered"]


def test_approve_with_a_body_that_is_not_json_is_422(operator, pending):
    _, peer_id = pending
    response = operator.post(action(peer_id, "approve"), "{nope", content_type="application/json")
    assert response.status_code == 422
    assert Peer.objects.get().status == "pending_approval"


# --- suspend, resume, revoke ----------------------------------------------------------------------


def test_suspend_resume_revoke(operator, active):
    suspended = operator.post(action(active, "suspend"))
    assert suspended.status_code == 200
    assert suspended.json()["status"] == "suspended"
    assert Peer.objects.get().status == "suspended"

    resumed = operator.post(action(active, "resume"))
    assert resumed.status_code == 200
    body = resumed.json()
    peer = Peer.objects.get()
    assert body == {
        "peer_id": active,
        "node_id": peer.node_id,
        "node_url": peer.node_url,
        "status": "active",
        "allowed_scopes": ["company", "public"],
        "established_at": peer.established_at.isoformat(),
        "pubkey_fingerprint": fingerprint(peer.federation_pubkey),
        "origin": "declared",
    }
    assert peer.next_pull_at == peer.status_changed_at

    revoked = operator.post(action(active, "revoke"))
    assert revoked.json()["status"] == "revoked"
    events = [(e.event_type, e.detail["previous_status"], e.detail["status"]) for e in federation_events()[2:]]
    assert events == [
        ("peer_suspended", "active", "suspended"),
        ("peer_resumed", "suspended", "active"),
        ("peer_revoked", "active", "revoked"),
    ]
    assert all(e.target == active and e.actor == "stigmem://test/agent/operator" for e in federation_events()[2:])


@pytest.mark.parametrize(
    "setup, name, detail",
    [
        ([], "suspend", "cannot suspend a peer whose status is pending_approval"),
        ([], "resume", "cannot resume a peer whose status is pending_approval"),
        (["approve"], "resume", "cannot resume a peer whose status is active"),
        (["approve", "suspend"], "suspend", "cannot suspend a peer whose status is suspended"),
        (["revoke"], "revoke", "cannot revoke a peer whose status is revoked"),
        (["revoke"], "resume", "cannot resume a peer whose status is revoked"),
        (["approve", "revoke"], "suspend", "cannot suspend a peer whose status is revoked"),
    ],
)
def test_invalid_transitions_are_409(operator, pending, setup, name, detail):
    remote, peer_id = pending
    for step in setup:
        body = {"pubkey_fingerprint": fingerprint(remote.pubkey)} if step == "approve" else None
        assert operator.post(action(peer_id, step), body, format="json").status_code == 200
    status_before = Peer.objects.get().status
    events_before = len(federation_events())
    response = operator.post(action(peer_id, name))
    assert response.status_code == 409
    assert response.json() == {"detail": detail}
    assert Peer.objects.get().status == status_before
    assert len(federation_events()) == events_before


def test_revoked_is_final_even_for_approval(operator, pending):
    remote, peer_id = pending
    assert operator.post(action(peer_id, "revoke")).status_code == 200
    response = approve(operator, peer_id, fingerprint(remote.pubkey))
    assert response.status_code == 409
    assert Peer.objects.get().status == "revoked"


def test_a_revoked_node_cannot_register_again(operator, pending, remote_http):
    remote, peer_id = pending
    operator.post(action(peer_id, "revoke"))
    response = operator.post(PEERS, remote.declaration(), format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "peer already registered (status=revoked)"}


def test_status_changes_of_another_tenants_peer_are_404(make_client, active):
    stranger = make_client(["admin:federation"], tenant="acme")
    for name in ("suspend", "resume", "revoke"):
        assert stranger.post(action(active, name)).status_code == 404
    assert Peer.objects.get().status == "active"


def test_an_unknown_action_is_404(operator, active):
    response = operator.post(action(active, "delete"))
    assert response.status_code == 404
    assert Peer.objects.get().status == "active"


# --- listing --------------------------------------------------------------------------------------


def test_list_shows_only_the_callers_tenant(make_client, operator, remote_http, active):
    acme = make_client(["federate"], tenant="acme")
    other_remote, other_id = register(acme, remote_http)

    listed = operator.get(PEERS)
    assert listed.status_code == 200
    peer = Peer.objects.get(pk=active)
    assert listed.json() == {
        "peers": [
            {
                "peer_id": active,
                "node_id": peer.node_id,
                "node_url": peer.node_url,
                "status": "active",
                "allowed_scopes": ["company", "public"],
                "established_at": peer.established_at.isoformat(),
                "pubkey_fingerprint": fingerprint(peer.federation_pubkey),
                "origin": "declared",
            }
        ]
    }
    (acme_peer,) = acme.get(PEERS).json()["peers"]
    assert (acme_peer["peer_id"], acme_peer["node_id"], acme_peer["established_at"]) == (
        other_id,
        other_remote.node_id,
        None,
    )
    assert make_client(["federate"], tenant="empty").get(PEERS).json() == {"peers": []}


# --- registration body validation -----------------------------------------------------------------

FIELD_CASES = [
    ("node_id", None, "missing"),
    ("node_id", 7, "string_type"),
    ("node_id", "node:abc", "value_error"),
    ("node_id", "stigmem:node:", "value_error"),
    ("node_id", "stigmem:node:a b", "value_error"),
    ("node_id", "stigmem:node:a\x00b", "value_error"),
    ("node_id", "stigmem:node:abc\n", "value_error"),
    ("node_id", "stigmem:node:\ud800", "value_error"),
    ("node_id", "stigmem:node:" + "a" * 300, "value_error"),
    ("node_url", None, "missing"),
    ("node_url", ["http://x.example"], "string_type"),
    ("node_url", "ftp://remote.example", "value_error"),
    ("node_url", "remote.example", "value_error"),
    ("node_url", "http://", "value_error"),
    ("node_url", "http://remote.example/?q=1", "value_error"),
    ("node_url", "http://user:pw@remote.example", "value_error"),
    ("node_url", "http://remote.example/\x00", "value_error"),
    ("node_url", "http://[::1", "value_error"),
    ("node_url", "http://remote.example/" + "a" * 3000, "value_error"),
    ("federation_pubkey", None, "missing"),
    ("federation_pubkey", 1, "string_type"),
    ("federation_pubkey", "not base64!", "value_error"),
    ("federation_pubkey", "AAAA", "value_error"),
    ("federation_pubkey", "A" * 10_000, "value_error"),
    ("allowed_scopes", None, "missing"),
    ("allowed_scopes", "company", "list_type"),
    ("allowed_scopes", [], "value_error"),
    ("allowed_scopes", ["company", "galaxy"], "value_error"),
    ("allowed_scopes", [1], "value_error"),
    ("signed_at", None, "missing"),
    ("signed_at", 1747000000, "string_type"),
    ("signed_at", "2026-05-14T12:34:56+00:00", "value_error"),
    ("signed_at", "2026-5-14T12:34:56Z", "value_error"),
    ("signed_at", "2026-02-30T12:34:56Z", "value_error"),
    ("signed_at", "2026-05-14T12:34:56Z\n", "value_error"),
    ("signed_at", "\uff12\uff10\uff12\uff16-05-14T12:34:56Z", "value_error"),
    ("declaration_sig", None, "missing"),
    ("declaration_sig", {"sig": "x"}, "string_type"),
    ("declaration_sig", "a" * 200, "value_error"),
    ("declaration_sig", "not base64!", "value_error"),
    ("declaration_sig", "ab\x00", "value_error"),
    ("declaration_sig", "abc\n", "value_error"),
]


@pytest.mark.parametrize("field, value, type_", FIELD_CASES)
def test_register_body_validation_is_422_per_field(operator, remote_http, field, value, type_):
    remote = RemoteNode()
    remote.serve_well_known(remote_http)
    body = remote.declaration()
    if value is None:
        del body[field]
    else:
        body[field] = value
    # json.dumps escapes lone surrogates, which the test client's own encoder would refuse to send.
    response = operator.post(PEERS, json.dumps(body), content_type="application/json")
    assert response.status_code == 422, response.content
    (error,) = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", field], type_)
    assert not Peer.objects.exists()
    assert not federation_events()
    assert not remote_http.calls


def test_register_lists_every_bad_field_at_once(operator):
    response = operator.post(PEERS, {"node_id": 1, "extra": "ignored"}, format="json")
    assert response.status_code == 422
    locs = [tuple(error["loc"]) for error in response.json()["detail"]]
    assert locs == [
        ("body", "node_id"),
        ("body", "node_url"),
        ("body", "federation_pubkey"),
        ("body", "allowed_scopes"),
        ("body", "signed_at"),
        ("body", "declaration_sig"),
    ]


@pytest.mark.parametrize(
    "raw",
    ['["a", "list"]', '"a string"', "null", "{not json", "\x00"],
)
def test_register_body_that_is_not_an_object_is_422(operator, raw):
    response = operator.post(PEERS, raw, content_type="application/json")
    assert response.status_code == 422
    assert not Peer.objects.exists()
    assert not federation_events()
