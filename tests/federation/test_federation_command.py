"""``manage.py federation``: connect, list, approve, suspend/resume/revoke, fingerprint."""

from __future__ import annotations

import json
import re
import uuid
from io import StringIO

import pytest
import responses
from django.core.management import call_command
from django.core.management.base import CommandError

from federation.handshake import fingerprint
from federation.models import Peer
from stigmem import signing
from stigmem.models import AuditEvent
from stigmem.node import node_id
from tests.federation.declarations import RemoteNode


def federation(*args: str) -> str:
    out = StringIO()
    call_command("federation", *args, stdout=out)
    return out.getvalue()


def fails(*args: str) -> str:
    with pytest.raises(CommandError) as caught:
        federation(*args)
    assert caught.value.returncode == 1
    return str(caught.value)


def line(output: str, label: str) -> str:
    match = re.search(rf"^{label}:\s+(.*)$", output, re.MULTILINE)
    assert match, output
    return match.group(1).strip()


def serve_remote(mock: responses.RequestsMock, remote: RemoteNode, status: int = 201, **answer) -> None:
    remote.serve_well_known(mock)
    if not answer:
        answer = {"json": {"peer_id": str(uuid.uuid4()), "status": "pending_approval", "verified_at": None}}
    mock.add(responses.POST, f"{remote.url}/v1/federation/peers", status=status, **answer)


def make_peer(status: str = Peer.Status.PENDING_APPROVAL, tenant: str = "default") -> Peer:
    remote = RemoteNode()
    return Peer.objects.create(
        tenant=tenant,
        node_id=remote.node_id,
        node_url=remote.url,
        federation_pubkey=remote.pubkey,
        allowed_scopes=["company", "public"],
        status=status,
    )


def test_connect_prints_both_fingerprints_and_what_to_do(db, remote_http):
    remote = RemoteNode()
    serve_remote(remote_http, remote)
    output = federation("connect", remote.url, "--api-key", "sk_remote_key")

    peer = Peer.objects.get()
    assert (peer.status, peer.origin, peer.tenant, peer.allowed_scopes) == (
        "pending_approval",
        "connected",
        "default",
        ["company", "public"],
    )
    assert line(output, "remote") == f"{remote.url} registered this node as pending_approval"
    assert line(output, "peer id") == peer.peer_id
    assert line(output, "peer node id") == remote.node_id
    assert line(output, "our fingerprint") == fingerprint(signing.public_key_b64())
    assert line(output, "their fingerprint") == fingerprint(remote.pubkey)
    assert f"manage.py federation approve {peer.peer_id} --fingerprint {fingerprint(remote.pubkey)}" in output
    assert "compare fingerprints" in output
    (posted,) = [c for c in remote_http.calls if c.request.method == "POST"]
    assert posted.request.headers["Authorization"] == "Bearer sk_remote_key"
    assert json.loads(posted.request.body)["allowed_scopes"] == ["company", "public"]
    (event,) = AuditEvent.objects.filter(event_type="peer_connected")
    assert event.actor.startswith("cli:")


def test_connect_with_scopes_and_tenant(db, remote_http):
    remote = RemoteNode()
    serve_remote(remote_http, remote)
    federation("connect", remote.url, "--scopes", "public", "--tenant", "acme")
    peer = Peer.objects.get()
    assert (peer.tenant, peer.allowed_scopes) == ("acme", ["public"])
    (posted,) = [c for c in remote_http.calls if c.request.method == "POST"]
    assert "Authorization" not in posted.request.headers
    assert json.loads(posted.request.body)["allowed_scopes"] == ["public"]


def test_connect_when_the_remote_already_knows_us(db, remote_http):
    remote = RemoteNode()
    serve_remote(remote_http, remote, 409, json={"detail": "peer already registered (status=pending_approval)"})
    output = federation("connect", remote.url)
    assert "already has this node registered (peer already registered (status=pending_approval))" in output
    assert Peer.objects.get().status == "pending_approval"


def test_connect_explains_a_remote_rejection(db, remote_http):
    remote = RemoteNode()
    serve_remote(remote_http, remote, json={"peer_id": str(uuid.uuid4()), "status": "rejected"})
    output = federation("connect", remote.url)
    assert "registered this node as rejected" in output
    assert "could not verify this node" in output


def test_connect_to_an_already_active_peer_says_it_left_it_alone(db, remote_http):
    remote = RemoteNode()
    Peer.objects.create(
        tenant="default",
        node_id=remote.node_id,
        node_url=remote.url,
        federation_pubkey=remote.pubkey,
        allowed_scopes=["company"],
        status=Peer.Status.ACTIVE,
    )
    serve_remote(remote_http, remote, 409, json={"detail": "peer already registered (status=active)"})
    output = federation("connect", remote.url)
    assert "The local peer record is active and was left unchanged." in output
    assert "approve" not in output.split("left unchanged")[1]


def test_connect_errors_exit_1_with_a_clear_message(db, remote_http):
    remote = RemoteNode()
    serve_remote(remote_http, remote, 401, json={"detail": "invalid api key"})
    message = fails("connect", remote.url, "--api-key", "sk_wrong")
    assert "refused our declaration: HTTP 401 invalid api key" in message
    assert "--api-key" in message
    assert "sk_wrong" not in message
    assert not Peer.objects.exists()


def test_connect_to_an_unreachable_node(db, remote_http):
    assert "cannot use http://nowhere.example as a peer" in fails("connect", "http://nowhere.example")


def test_connect_with_federation_off(db, settings, remote_http):
    settings.STIGMEM_FEDERATION_ENABLED = False
    assert "federation is not enabled on this node" in fails("connect", "http://remote.example")
    assert not remote_http.calls


def test_connect_rejects_unknown_scopes(db, remote_http):
    assert "invalid choice: 'galaxy'" in fails("connect", "http://remote.example", "--scopes", "galaxy")
    assert not remote_http.calls


def test_list(db):
    assert federation("list").strip() == "no peers"
    mine, theirs = make_peer(), make_peer(Peer.Status.ACTIVE, tenant="acme")
    everything = federation("list")
    assert mine.peer_id in everything and theirs.peer_id in everything
    assert f"fingerprint={fingerprint(mine.federation_pubkey)}" in everything
    only_acme = federation("list", "--tenant", "acme")
    assert theirs.peer_id in only_acme and mine.peer_id not in only_acme
    assert "tenant=acme" in only_acme and "active" in only_acme


def test_approve(db):
    peer = make_peer(tenant="acme")
    output = federation("approve", peer.peer_id, "--fingerprint", fingerprint(peer.federation_pubkey))
    assert output.strip() == f"approved: {peer.node_id} (peer {peer.peer_id}) is active"
    peer.refresh_from_db()
    assert peer.status == "active"
    assert peer.approved_by.startswith("cli:")
    (event,) = AuditEvent.objects.filter(event_type="peer_approved")
    assert event.tenant == "acme"


def test_approve_with_the_wrong_fingerprint_fails_and_is_audited(db):
    peer = make_peer()
    assert fails("approve", peer.peer_id, "--fingerprint", "sha256:" + "0" * 64) == "fingerprint mismatch"
    peer.refresh_from_db()
    assert peer.status == "pending_approval"
    assert AuditEvent.objects.filter(event_type="peer_approval_failed", target=peer.peer_id).count() == 1


def test_approve_errors(db):
    assert fails("approve", str(uuid.uuid4()), "--fingerprint", "x") == "peer not found"
    assert fails("approve", "not-a-uuid", "--fingerprint", "x") == "peer not found"
    active = make_peer(Peer.Status.ACTIVE)
    assert fails("approve", active.peer_id, "--fingerprint", "x") == "peer is not pending approval (status=active)"
    assert "--fingerprint" in fails("approve", active.peer_id)


def test_suspend_resume_revoke(db):
    peer = make_peer(Peer.Status.ACTIVE)
    assert federation("suspend", peer.peer_id).strip() == f"suspend: {peer.node_id} (peer {peer.peer_id}) is suspended"
    assert federation("resume", peer.peer_id).strip().endswith("is active")
    assert fails("resume", peer.peer_id) == "cannot resume a peer whose status is active"
    assert federation("revoke", peer.peer_id).strip().endswith("is revoked")
    assert fails("revoke", peer.peer_id) == "cannot revoke a peer whose status is revoked"
    assert fails("suspend", str(uuid.uuid4())) == "peer not found"
    events = AuditEvent.objects.filter(target=peer.peer_id).order_by("id").values_list("event_type", flat=True)
    assert list(events) == ["peer_suspended", "peer_resumed", "peer_revoked"]


def test_fingerprint(db, settings):
    output = federation("fingerprint")
    assert line(output, "node id") == node_id()
    assert line(output, "node url") == settings.STIGMEM_NODE_URL
    assert line(output, "public key") == signing.public_key_b64()
    assert line(output, "fingerprint") == fingerprint(signing.public_key_b64())


def test_a_subcommand_is_required(db):
    assert "subcommand" in fails()
