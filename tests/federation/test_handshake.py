"""The handshake (WIRE.md §6.2): declarations, registration with well-known verification, and connect."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import timedelta

import pytest
import requests
import responses
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation import handshake
from federation.models import Peer
from stigmem import signing
from stigmem.models import AuditEvent
from stigmem.node import node_id
from tests.federation.declarations import RemoteNode, b64url, signed_at

PEERS = "/v1/federation/peers"


@pytest.fixture
def federator(make_client):
    return make_client(["federate"], entity="stigmem://test/agent/federator")


@pytest.fixture
def remote() -> RemoteNode:
    return RemoteNode()


def federation_events() -> list[AuditEvent]:
    """Audit rows other than the test keys' own creation."""
    return list(AuditEvent.objects.exclude(event_type="api_key_created").order_by("id"))


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- declarations ---------------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_key_string():
    key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert handshake.fingerprint(key) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_own_declaration_signs_exactly_the_sorted_compact_json_of_five_fields(db, settings):
    # A non-ASCII host shows the default ensure_ascii: the reference signs "\u00fc", not the UTF-8 bytes.
    settings.STIGMEM_NODE_URL = "http://b\u00fccher.example:8765"
    declaration = handshake.own_declaration(["public", "company", "public"])

    assert set(declaration) == {
        "node_id",
        "node_url",
        "federation_pubkey",
        "allowed_scopes",
        "signed_at",
        "declaration_sig",
    }
    assert declaration["node_id"] == node_id()
    assert declaration["federation_pubkey"] == signing.public_key_b64()
    assert declaration["allowed_scopes"] == ["company", "public"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", declaration["signed_at"])
    golden = (
        '{"allowed_scopes":["company","public"],'
        f'"federation_pubkey":"{declaration["federation_pubkey"]}",'
        f'"node_id":"{declaration["node_id"]}",'
        '"node_url":"http://b\\u00fccher.example:8765",'
        f'"signed_at":"{declaration["signed_at"]}"}}'
    ).encode("ascii")
    public = Ed25519PublicKey.from_public_bytes(_decode(declaration["federation_pubkey"]))
    public.verify(_decode(declaration["declaration_sig"]), golden)  # raises if the bytes differ
    assert "=" not in declaration["declaration_sig"]
    assert handshake.verify_declaration(declaration, declaration["federation_pubkey"])


def test_a_remote_declaration_verifies_and_any_change_breaks_it(remote):
    declaration = remote.declaration()
    assert handshake.verify_declaration(declaration, remote.pubkey)
    for field, value in [
        ("node_url", "http://elsewhere.example"),
        ("allowed_scopes", ["company", "public", "team"]),
        ("signed_at", signed_at(timedelta(seconds=1))),
        ("node_id", f"stigmem:node:{uuid.uuid4()}"),
    ]:
        assert not handshake.verify_declaration({**declaration, field: value}, remote.pubkey), field
    assert not handshake.verify_declaration(declaration, RemoteNode().pubkey)
    assert not handshake.verify_declaration({**declaration, "declaration_sig": 5}, remote.pubkey)
    assert not handshake.verify_declaration({"node_id": remote.node_id}, remote.pubkey)


# --- the well-known fetch -------------------------------------------------------------------------


def test_fetch_well_known_reads_the_document_with_a_five_second_timeout(remote, remote_http):
    remote.serve_well_known(remote_http)
    assert handshake.fetch_well_known(remote.url + "/") == remote.well_known()
    (call,) = remote_http.calls
    assert call.request.url == f"{remote.url}/.well-known/stigmem"
    assert call.request.req_kwargs["timeout"] == 5.0


@pytest.mark.parametrize(
    "answer, code",
    [
        ({"status": 302, "headers": {"Location": "http://other.example/.well-known/stigmem"}}, "redirect"),
        ({"status": 301, "headers": {"Location": "https://remote.example/.well-known/stigmem"}}, "redirect"),
        ({"status": 500, "json": {"detail": "boom"}}, "unreachable"),
        ({"status": 404, "json": {"detail": "not found"}}, "unreachable"),
        ({"status": 200, "body": "<html>hello</html>"}, "not_json"),
        ({"status": 200, "json": ["not", "an", "object"]}, "not_json"),
        ({"status": 200, "body": b"\xff\xfe"}, "not_json"),
        ({"body": requests.ConnectionError("connection refused")}, "unreachable"),
        ({"body": requests.ConnectTimeout("timed out")}, "unreachable"),
        ({"status": 200, "body": b"{" + b" " * (300 * 1024) + b"}"}, "response_too_large"),
    ],
)
def test_fetch_well_known_failures(remote, remote_http, answer, code):
    remote_http.add(responses.GET, f"{remote.url}/.well-known/stigmem", **answer)
    # Were a redirect followed, it would land here.
    remote_http.add(responses.GET, "http://other.example/.well-known/stigmem", json=remote.well_known())
    with pytest.raises(handshake.WellKnownUnavailable) as caught:
        handshake.fetch_well_known(remote.url)
    assert caught.value.code == code
    assert [c.request.url for c in remote_http.calls] == [f"{remote.url}/.well-known/stigmem"]


def test_fetch_well_known_refuses_private_addresses_unless_allowed(settings, remote_http):
    settings.STIGMEM_FEDERATION_ALLOW_PRIVATE = False
    with pytest.raises(handshake.WellKnownUnavailable) as caught:
        handshake.fetch_well_known("http://127.0.0.1:9000")
    assert caught.value.code == "unsafe_address"
    assert not remote_http.calls


# --- registration: POST /v1/federation/peers ------------------------------------------------------


def test_register_verified_declaration_is_pending_approval(federator, remote, remote_http):
    remote.serve_well_known(remote_http)
    declaration = remote.declaration(scopes=["public", "company"])
    response = federator.post(PEERS, declaration, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    peer = Peer.objects.get()
    assert body == {"peer_id": peer.peer_id, "status": "pending_approval", "verified_at": None}
    assert (peer.node_id, peer.node_url, peer.federation_pubkey) == (remote.node_id, remote.url, remote.pubkey)
    assert (peer.tenant, peer.origin, peer.status) == ("default", "declared", "pending_approval")
    assert peer.allowed_scopes == ["company", "public"]
    assert (peer.declaration_sig, peer.signed_at) == (declaration["declaration_sig"], declaration["signed_at"])
    assert peer.established_at is None
    (event,) = federation_events()
    assert (event.tenant, event.event_type, event.actor, event.target) == (
        "default",
        "peer_registered",
        "stigmem://test/agent/federator",
        peer.peer_id,
    )
    assert event.detail["node_id"] == remote.node_id
    assert event.detail["pubkey_fingerprint"] == handshake.fingerprint(remote.pubkey)
    assert [c.request.url for c in remote_http.calls] == [f"{remote.url}/.well-known/stigmem"]


def test_register_accepts_a_padded_key_and_stores_the_canonical_form(federator, remote, remote_http):
    remote.serve_well_known(remote_http)
    padded = RemoteNode(url=remote.url, key=remote.key, node_id=remote.node_id)
    declaration = padded.declaration()
    # Signed over the padded string, as a peer sending padding would.
    fields = {**declaration, "federation_pubkey": remote.pubkey + "="}
    fields.pop("declaration_sig")
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    fields["declaration_sig"] = b64url(remote.key.sign(payload))
    response = federator.post(PEERS, fields, format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "pending_approval"
    assert Peer.objects.get().federation_pubkey == remote.pubkey


def _wrong_key(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    remote.serve_well_known(mock)
    return remote.declaration(signer=Ed25519PrivateKey.generate())


def _tampered(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    remote.serve_well_known(mock)
    return {**remote.declaration(), "allowed_scopes": ["company", "public", "team"]}


def _pubkey_mismatch(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    remote.serve_well_known(mock, federation_pubkey=RemoteNode().pubkey)
    return remote.declaration()


def _node_id_mismatch(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    remote.serve_well_known(mock, node_id=f"stigmem:node:{uuid.uuid4()}")
    return remote.declaration()


def _unreachable(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    mock.add(responses.GET, f"{remote.url}/.well-known/stigmem", body=requests.ConnectionError("refused"))
    return remote.declaration()


def _redirecting(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    # The declaration names a host it does not control and points at a well-known that would pass.
    mock.add(
        responses.GET,
        f"{remote.url}/.well-known/stigmem",
        status=307,
        headers={"Location": "http://attacker.example/.well-known/stigmem"},
    )
    mock.add(responses.GET, "http://attacker.example/.well-known/stigmem", json=remote.well_known())
    return remote.declaration()


def _not_json(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    mock.add(responses.GET, f"{remote.url}/.well-known/stigmem", body="<html>it works</html>")
    return remote.declaration()


def _federation_disabled(remote: RemoteNode, mock: responses.RequestsMock) -> dict:
    document = remote.well_known(federation="disabled")
    document.pop("federation_pubkey")
    mock.add(responses.GET, f"{remote.url}/.well-known/stigmem", json=document)
    return remote.declaration()


@pytest.mark.parametrize(
    "forge, reason, fetched",
    [
        (_wrong_key, "bad_signature", False),
        (_tampered, "bad_signature", False),
        (_pubkey_mismatch, "pubkey_mismatch", True),
        (_node_id_mismatch, "node_id_mismatch", True),
        (_unreachable, "unreachable", True),
        (_redirecting, "redirect", True),
        (_not_json, "not_json", True),
        (_federation_disabled, "not_federation_enabled", True),
    ],
)
def test_forged_or_unverifiable_declarations_are_kept_rejected(federator, remote, remote_http, forge, reason, fetched):
    declaration = forge(remote, remote_http)
    response = federator.post(PEERS, declaration, format="json")

    assert response.status_code == 201, response.content
    peer = Peer.objects.get()
    assert response.json() == {"peer_id": peer.peer_id, "status": "rejected", "verified_at": None}
    assert peer.status == Peer.Status.REJECTED
    assert not Peer.objects.filter(status=Peer.Status.ACTIVE).exists()
    (event,) = federation_events()
    assert (event.event_type, event.target, event.detail["reason"]) == (
        "peer_registration_rejected",
        peer.peer_id,
        reason,
    )
    assert event.detail["message"]
    # A bad signature costs no outbound request; a redirect is never followed.
    assert [c.request.url for c in remote_http.calls] == ([f"{remote.url}/.well-known/stigmem"] if fetched else [])


def test_a_private_node_url_is_rejected_without_connecting(settings, federator, remote_http):
    settings.STIGMEM_FEDERATION_ALLOW_PRIVATE = False
    remote = RemoteNode(url="http://10.1.2.3:8765")
    remote.serve_well_known(remote_http)
    response = federator.post(PEERS, remote.declaration(), format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "rejected"
    (event,) = federation_events()
    assert (event.event_type, event.detail["reason"]) == ("peer_registration_rejected", "unsafe_address")
    assert not remote_http.calls


@pytest.mark.parametrize(
    "when, reason, detail",
    [
        (timedelta(hours=-25), "stale_declaration", "declaration is stale: signed_at is more than 24 hours ago"),
        (timedelta(minutes=10), "future_declaration", "declaration signed_at is more than 5 minutes in the future"),
    ],
)
def test_stale_or_future_declarations_are_refused_without_a_record(
    federator, remote, remote_http, when, reason, detail
):
    remote.serve_well_known(remote_http)
    response = federator.post(PEERS, remote.declaration(when=signed_at(when)), format="json")
    assert response.status_code == 400
    assert response.json() == {"detail": detail}
    assert not Peer.objects.exists()
    (event,) = federation_events()
    assert (event.event_type, event.target, event.detail["reason"]) == (
        "peer_registration_rejected",
        remote.node_id,
        reason,
    )
    assert not remote_http.calls


def test_declarations_just_inside_the_window_are_accepted(federator, remote_http):
    for when in (timedelta(hours=-23, minutes=-59), timedelta(minutes=4)):
        remote = RemoteNode()
        remote.serve_well_known(remote_http)
        response = federator.post(PEERS, remote.declaration(when=signed_at(when)), format="json")
        assert response.json()["status"] == "pending_approval", when


def test_a_node_cannot_register_itself(db, federator, remote_http):
    declaration = handshake.own_declaration(["company"])
    response = federator.post(PEERS, declaration, format="json")
    assert response.status_code == 400
    assert response.json() == {"detail": "a node cannot register itself as its own peer"}
    assert not Peer.objects.exists()
    assert [e.detail["reason"] for e in federation_events()] == ["self"]


def test_a_known_node_id_is_409(federator, remote, remote_http):
    remote.serve_well_known(remote_http)
    assert federator.post(PEERS, remote.declaration(), format="json").status_code == 201
    again = federator.post(PEERS, remote.declaration(scopes=["public"]), format="json")
    assert again.status_code == 409
    assert again.json() == {"detail": "peer already registered (status=pending_approval)"}
    assert Peer.objects.get().allowed_scopes == ["company", "public"]
    assert [e.event_type for e in federation_events()] == ["peer_registered"]
    assert len(remote_http.calls) == 1


def test_a_rejected_peer_may_register_again_once_it_verifies(federator, remote, remote_http):
    # First attempt: the well-known is down (a transient failure).
    remote_http.add(responses.GET, f"{remote.url}/.well-known/stigmem", status=503)
    first = federator.post(PEERS, remote.declaration(), format="json")
    assert first.json()["status"] == "rejected"

    remote_http.replace(responses.GET, f"{remote.url}/.well-known/stigmem", json=remote.well_known())
    second = federator.post(PEERS, remote.declaration(scopes=["public"]), format="json")
    assert second.status_code == 201
    assert second.json() == {"peer_id": first.json()["peer_id"], "status": "pending_approval", "verified_at": None}
    peer = Peer.objects.get()
    assert (peer.status, peer.allowed_scopes) == ("pending_approval", ["public"])
    assert [e.event_type for e in federation_events()] == ["peer_registration_rejected", "peer_registered"]


def test_registration_goes_to_the_callers_tenant(make_client, remote, remote_http):
    other = make_client(["federate"], tenant="acme")
    remote.serve_well_known(remote_http)
    assert other.post(PEERS, remote.declaration(), format="json").status_code == 201
    peer = Peer.objects.get()
    assert peer.tenant == "acme"
    assert [e.tenant for e in federation_events()] == ["acme"]


# --- connect --------------------------------------------------------------------------------------


def connect(remote: RemoteNode, **overrides) -> handshake.ConnectResult:
    arguments = {"api_key": "sk_remote_key", "scopes": ["public", "company"], "tenant": "default", "actor": "ops"}
    return handshake.connect(remote.url + "/", **{**arguments, **overrides})


def serve_registration(remote: RemoteNode, mock: responses.RequestsMock, status: int = 201, **answer) -> None:
    if not answer:
        answer = {"json": {"peer_id": str(uuid.uuid4()), "status": "pending_approval", "verified_at": None}}
    mock.add(responses.POST, f"{remote.url}/v1/federation/peers", status=status, **answer)


def test_connect_posts_our_declaration_and_records_the_remote(db, remote, remote_http):
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http)
    result = connect(remote)

    posted = [c for c in remote_http.calls if c.request.method == "POST"]
    assert len(posted) == 1
    assert posted[0].request.headers["Authorization"] == "Bearer sk_remote_key"
    declaration = json.loads(posted[0].request.body)
    assert declaration["node_id"] == node_id()
    assert declaration["allowed_scopes"] == ["company", "public"]
    assert handshake.verify_declaration(declaration, signing.public_key_b64())

    peer = Peer.objects.get()
    assert result.peer == peer
    assert (peer.node_id, peer.node_url, peer.federation_pubkey) == (remote.node_id, remote.url, remote.pubkey)
    assert (peer.status, peer.origin, peer.tenant, peer.allowed_scopes) == (
        "pending_approval",
        "connected",
        "default",
        ["company", "public"],
    )
    assert (result.remote_status, result.remote_detail) == ("pending_approval", "")
    assert result.own_fingerprint == handshake.fingerprint(signing.public_key_b64())
    assert result.peer_fingerprint == handshake.fingerprint(remote.pubkey)
    (event,) = federation_events()
    assert (event.event_type, event.actor, event.target) == ("peer_connected", "ops", peer.peer_id)
    assert event.detail["remote_status"] == "pending_approval"
    assert "sk_remote_key" not in json.dumps(event.detail)


def test_connect_without_api_key_sends_no_authorization(db, remote, remote_http):
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http)
    connect(remote, api_key=None)
    (posted,) = [c for c in remote_http.calls if c.request.method == "POST"]
    assert "Authorization" not in posted.request.headers


def test_connect_when_the_remote_already_has_us_keeps_going(db, remote, remote_http):
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http, 409, json={"detail": "peer already registered (status=active)"})
    result = connect(remote)
    assert (result.remote_status, result.remote_detail) == (
        "already_registered",
        "peer already registered (status=active)",
    )
    assert Peer.objects.get().status == "pending_approval"


def test_connect_reports_a_remote_rejection_and_still_records_the_remote(db, remote, remote_http):
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http, json={"peer_id": str(uuid.uuid4()), "status": "rejected"})
    result = connect(remote)
    assert result.remote_status == "rejected"
    assert Peer.objects.get().status == "pending_approval"


@pytest.mark.parametrize(
    "status, answer, expected",
    [
        (401, {"json": {"detail": "invalid api key"}}, "HTTP 401 invalid api key (pass --api-key"),
        (403, {"json": {"detail": "federate permission required"}}, "HTTP 403 federate permission required"),
        (422, {"json": {"detail": [{"loc": ["body"], "msg": "x", "type": "y"}]}}, "HTTP 422"),
        (500, {"body": "oops"}, "HTTP 500"),
        (302, {"headers": {"Location": "http://elsewhere.example/"}}, "redirects are not followed"),
    ],
)
def test_connect_fails_cleanly_when_the_remote_refuses(db, remote, remote_http, status, answer, expected):
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http, status, **answer)
    with pytest.raises(handshake.ConnectFailed) as caught:
        connect(remote)
    assert expected in str(caught.value)
    assert "sk_remote_key" not in str(caught.value)
    assert not Peer.objects.exists()
    assert not federation_events()


def test_connect_fails_when_the_remote_is_unreachable(db, remote, remote_http):
    with pytest.raises(handshake.ConnectFailed, match=re.escape("cannot use http://remote.example as a peer")):
        connect(remote)
    assert not Peer.objects.exists()


def test_connect_requires_federation_on_the_remote(db, remote, remote_http):
    document = remote.well_known(federation="disabled")
    del document["federation_pubkey"]
    remote_http.add(responses.GET, f"{remote.url}/.well-known/stigmem", json=document)
    serve_registration(remote, remote_http)
    with pytest.raises(handshake.ConnectFailed, match="does not enable federation"):
        connect(remote)
    assert not [c for c in remote_http.calls if c.request.method == "POST"]
    assert not Peer.objects.exists()


def test_connect_requires_federation_here(db, settings, remote, remote_http):
    settings.STIGMEM_FEDERATION_ENABLED = False
    with pytest.raises(handshake.ConnectFailed, match="federation is not enabled on this node"):
        connect(remote)
    assert not remote_http.calls


def test_connect_to_ourselves_is_refused(db, remote, remote_http):
    remote.serve_well_known(remote_http, node_id=node_id())
    serve_registration(remote, remote_http)
    with pytest.raises(handshake.ConnectFailed, match="is this node itself"):
        connect(remote)
    assert not [c for c in remote_http.calls if c.request.method == "POST"]
    assert not Peer.objects.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"scopes": []}, "scopes must be a non-empty list"),
        ({"scopes": ["galaxy"]}, "every scope must be one of"),
    ],
)
def test_connect_validates_its_arguments(db, remote, remote_http, arguments, message):
    with pytest.raises(handshake.ConnectFailed, match=message):
        connect(remote, **arguments)
    assert not remote_http.calls


@pytest.mark.parametrize("url", ["ftp://remote.example", "http://user:pw@remote.example", "http://r.example/?x=1", ""])
def test_connect_refuses_unusable_urls(db, remote_http, url):
    with pytest.raises(handshake.ConnectFailed, match="the node URL"):
        handshake.connect(url, api_key=None, scopes=["company"], tenant="default", actor="ops")
    assert not remote_http.calls


def test_connect_leaves_an_active_peer_alone(db, remote, remote_http):
    peer = Peer.objects.create(
        tenant="default",
        node_id=remote.node_id,
        node_url=remote.url,
        federation_pubkey=remote.pubkey,
        allowed_scopes=["public"],
        status=Peer.Status.ACTIVE,
    )
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http, 409, json={"detail": "peer already registered (status=active)"})
    result = connect(remote)
    peer.refresh_from_db()
    assert result.peer.status == peer.status == "active"
    assert (peer.allowed_scopes, peer.origin) == (["public"], "declared")
    assert [e.detail["status"] for e in federation_events()] == ["active"]


def test_connect_updates_a_rejected_record(db, federator, remote, remote_http):
    remote_http.add(responses.GET, f"{remote.url}/.well-known/stigmem", status=503)
    rejected_id = federator.post(PEERS, remote.declaration(), format="json").json()["peer_id"]
    remote_http.replace(responses.GET, f"{remote.url}/.well-known/stigmem", json=remote.well_known())
    serve_registration(remote, remote_http)
    result = connect(remote, scopes=["public"])
    peer = Peer.objects.get()
    assert result.peer.peer_id == peer.peer_id == rejected_id
    assert (peer.status, peer.origin, peer.allowed_scopes) == ("pending_approval", "connected", ["public"])


def test_connect_refuses_a_revoked_node_without_contacting_it(db, remote, remote_http):
    Peer.objects.create(
        tenant="default",
        node_id=remote.node_id,
        node_url=remote.url,
        federation_pubkey=remote.pubkey,
        allowed_scopes=["public"],
        status=Peer.Status.REVOKED,
    )
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http)
    with pytest.raises(handshake.ConnectFailed, match="a revocation is final"):
        connect(remote)
    assert not [c for c in remote_http.calls if c.request.method == "POST"]


def test_connect_refuses_another_tenants_peer(db, remote, remote_http):
    Peer.objects.create(
        tenant="acme",
        node_id=remote.node_id,
        node_url=remote.url,
        federation_pubkey=remote.pubkey,
        allowed_scopes=["public"],
        status=Peer.Status.PENDING_APPROVAL,
    )
    remote.serve_well_known(remote_http)
    serve_registration(remote, remote_http)
    with pytest.raises(handshake.ConnectFailed, match="already a peer of tenant 'acme'"):
        connect(remote)
    assert Peer.objects.get().tenant == "acme"
