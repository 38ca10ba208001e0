"""Federation in the operator console: peer pages, the actions, the connect flow and the audit log."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import responses
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from federation import admin as federation_admin
from federation.handshake import fingerprint
from federation.models import Peer
from stigmem import audit, signing
from stigmem.cid import compute_cid
from stigmem.clock import now_ms
from stigmem.models import AuditEvent, Fact
from stigmem.node import node_id
from tests.federation.helpers import make_remote_peer

PEERS = "admin:federation_peer_changelist"
CONNECT = "admin:federation_peer_connect"
REMOTE = "http://127.0.0.1:8765"


@pytest.fixture
def pending(db) -> Peer:
    peer, _ = make_remote_peer(status=Peer.Status.PENDING_APPROVAL)
    return peer


@pytest.fixture
def active(db) -> Peer:
    peer, _ = make_remote_peer(status=Peer.Status.ACTIVE)
    peer.node_url = REMOTE
    peer.save(update_fields=["node_url"])
    return peer


def change_url(peer: Peer) -> str:
    return reverse("admin:federation_peer_change", args=[peer.pk])


def shown(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def act(browser: Client, action: str, peers: list[Peer], **extra):
    """Run a changelist action on ``peers``, following the redirect back to the list."""
    data = {"action": action, "_selected_action": [str(p.pk) for p in peers], **extra}
    return browser.post(reverse(PEERS), data, follow=True)


def peer_state(peer: Peer) -> tuple:
    peer.refresh_from_db()
    return (peer.status, peer.established_at, peer.approved_by, peer.fact_cursor, peer.tombstone_cursor)


def events(event_type: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=event_type).order_by("id"))


# --- pages ---------------------------------------------------------------------------------------


def test_changelist_lists_peers_with_their_replication_state(browser, active, pending):
    active.last_pull_outcome = "ok"
    active.lag_seconds = 125.0
    active.facts_ingested = 42
    active.facts_rejected = 3
    active.save()
    response = browser.get(reverse(PEERS))
    assert response.status_code == 200
    assert {p.pk for p in response.context["cl"].result_list} == {active.pk, pending.pk}
    html = response.content.decode()
    assert active.node_id in html and pending.node_id in html
    assert "2 min 5 s" in html
    assert fingerprint(active.federation_pubkey)[:19] in html
    assert reverse(CONNECT) in html
    assert "Federation is off" not in html
    for name in ("approve", "suspend", "resume", "revoke", "pull_now", "reset_cursor"):
        assert f'value="{name}"' in html


def test_changelist_filters_and_search(browser, active, pending):
    elsewhere, _ = make_remote_peer(tenant="acme", status=Peer.Status.SUSPENDED)

    def listed(**params) -> set:
        response = browser.get(reverse(PEERS), params)
        assert response.status_code == 200, params
        return {p.pk for p in response.context["cl"].result_list}

    assert listed(status__exact="pending_approval") == {pending.pk}
    assert listed(tenant__exact="acme") == {elsewhere.pk}
    assert listed(origin__exact="declared") == {active.pk, pending.pk, elsewhere.pk}
    assert listed(q=active.node_id) == {active.pk}
    assert listed(q="127.0.0.1") == {active.pk}


def test_changelist_warns_while_federation_is_off(browser, active, settings):
    settings.STIGMEM_FEDERATION_ENABLED = False
    response = browser.get(reverse(PEERS))
    assert response.status_code == 200
    assert "Federation is off on this node" in response.content.decode()


def test_change_page_shows_the_fingerprints_cursors_and_last_error(browser, active):
    active.fact_cursor = "4711"
    active.tombstone_cursor = "99"
    active.last_pull_error = "HTTP 503 from the peer"
    active.save()
    response = browser.get(change_url(active))
    assert response.status_code == 200
    html = response.content.decode()
    assert fingerprint(active.federation_pubkey) in html
    assert fingerprint(signing.public_key_b64()) in html
    assert "compare the whole string" in html
    assert "4711" in html and "99" in html and "HTTP 503 from the peer" in html
    assert federation_admin.audit_url(active).replace("&", "&amp;") in html
    # Buttons for what an active peer can do, no approve button.
    for label in ("Pull now", "Suspend", "Reset cursor…", "Revoke…"):
        assert f'value="{label}"' in html
    assert 'value="Approve…"' not in html


def test_peers_are_not_added_edited_or_deleted_by_form(browser, active):
    before = peer_state(active)
    assert browser.get(reverse("admin:federation_peer_add")).status_code == 403
    assert browser.post(change_url(active), {"status": "revoked", "fact_cursor": ""}).status_code == 403
    delete = reverse("admin:federation_peer_delete", args=[active.pk])
    assert browser.post(delete, {"post": "yes"}).status_code == 403
    assert peer_state(active) == before


def test_federation_audit_log_lists_federation_events_only(browser, active, pending):
    audit.record("default", "peer_approved", actor="admin:root", target=active.peer_id)
    audit.record("default", "federation_fact_rejected", actor=active.node_id, target=active.peer_id)
    audit.record("default", "peer_registered", actor=pending.node_id, target=pending.peer_id)
    audit.record("default", "fact_asserted", actor="stigmem://test/agent/x", target=active.peer_id)
    audit.record("default", "key_issued", actor="admin:root")

    listing = browser.get(reverse(PEERS))
    assert federation_admin.audit_url().replace("&", "&amp;") in listing.content.decode()

    everything = browser.get(federation_admin.audit_url())
    assert everything.status_code == 200
    assert sorted(e.event_type for e in everything.context["cl"].result_list) == [
        "federation_fact_rejected",
        "peer_approved",
        "peer_registered",
    ]
    one_peer = browser.get(federation_admin.audit_url(active))
    assert one_peer.status_code == 200
    assert sorted(e.event_type for e in one_peer.context["cl"].result_list) == [
        "federation_fact_rejected",
        "peer_approved",
    ]


# --- approve -------------------------------------------------------------------------------------


def test_approve_asks_for_the_fingerprint_first(browser, pending):
    page = browser.post(reverse(PEERS), {"action": "approve", "_selected_action": [str(pending.pk)]})
    assert page.status_code == 200
    html = page.content.decode()
    assert fingerprint(pending.federation_pubkey) in html
    assert f'name="fingerprint_{pending.pk}"' in html
    pending.refresh_from_db()
    assert pending.status == Peer.Status.PENDING_APPROVAL
    assert not events("peer_approved")


def test_approve_with_the_right_fingerprint_activates_the_peer(browser, pending):
    response = act(
        browser,
        "approve",
        [pending],
        post="yes",
        **{f"fingerprint_{pending.pk}": fingerprint(pending.federation_pubkey)},
    )
    assert response.status_code == 200
    assert shown(response) == [f"Approved {pending.node_id}: it is active."]
    pending.refresh_from_db()
    assert pending.status == Peer.Status.ACTIVE
    assert pending.established_at is not None
    approved = events("peer_approved")
    assert [(e.tenant, e.actor, e.target) for e in approved] == [("default", "admin:root", pending.peer_id)]


def test_approve_with_a_wrong_fingerprint_changes_nothing(browser, pending):
    before = peer_state(pending)
    wrong = "sha256:" + "0" * 64
    response = act(browser, "approve", [pending], post="yes", **{f"fingerprint_{pending.pk}": wrong})
    assert response.status_code == 200
    [message] = shown(response)
    assert message.startswith(f"{pending.node_id} not approved:") and "mismatch" in message
    assert peer_state(pending) == before
    assert not events("peer_approved")
    assert [e.target for e in events("peer_approval_failed")] == [pending.peer_id]


def test_approve_without_a_fingerprint_asks_again(browser, pending):
    before = peer_state(pending)
    page = browser.post(
        reverse(PEERS),
        {"action": "approve", "_selected_action": [str(pending.pk)], "post": "yes", f"fingerprint_{pending.pk}": " "},
    )
    assert page.status_code == 200
    assert "Paste the fingerprint for every peer below." in page.content.decode()
    assert peer_state(pending) == before
    assert not AuditEvent.objects.filter(event_type__startswith="peer_approv").exists()


def test_approve_skips_peers_that_are_not_pending(browser, active):
    before = peer_state(active)
    response = act(browser, "approve", [active])
    assert response.status_code == 200
    assert shown(response) == [f"{active.node_id} is active, not pending approval."]
    assert peer_state(active) == before


def test_approve_button_on_the_change_page_leads_to_the_confirmation(browser, pending):
    html = browser.get(change_url(pending)).content.decode()
    assert 'value="Approve…"' in html
    assert f'value="{pending.pk}"' in html


# --- suspend, resume, revoke ---------------------------------------------------------------------


def test_suspend_and_resume(browser, active):
    suspended = act(browser, "suspend", [active])
    assert shown(suspended) == ["Suspended 1 peer(s)."]
    active.refresh_from_db()
    assert active.status == Peer.Status.SUSPENDED
    assert [(e.actor, e.target) for e in events("peer_suspended")] == [("admin:root", active.peer_id)]

    resumed = act(browser, "resume", [active])
    assert shown(resumed) == ["Resumed 1 peer(s)."]
    active.refresh_from_db()
    assert active.status == Peer.Status.ACTIVE
    assert [(e.actor, e.target) for e in events("peer_resumed")] == [("admin:root", active.peer_id)]


def test_a_bad_transition_is_reported_and_changes_nothing(browser, pending):
    before = peer_state(pending)
    response = act(browser, "resume", [pending])
    [message] = shown(response)
    assert message.startswith(f"{pending.node_id}: ")
    assert peer_state(pending) == before
    assert not events("peer_resumed")


def test_revoke_asks_for_confirmation(browser, active):
    page = browser.post(reverse(PEERS), {"action": "revoke", "_selected_action": [str(active.pk)]})
    assert page.status_code == 200
    assert "Revoke the federation agreement with these peers?" in page.content.decode()
    active.refresh_from_db()
    assert active.status == Peer.Status.ACTIVE
    assert not events("peer_revoked")

    response = act(browser, "revoke", [active], post="yes")
    assert shown(response) == ["Revoked 1 peer(s)."]
    active.refresh_from_db()
    assert active.status == Peer.Status.REVOKED
    assert [(e.actor, e.target) for e in events("peer_revoked")] == [("admin:root", active.peer_id)]
    # Revoked is final: resuming is refused.
    again = act(browser, "resume", [active])
    assert len(shown(again)) == 1
    active.refresh_from_db()
    assert active.status == Peer.Status.REVOKED


# --- reset cursor --------------------------------------------------------------------------------


def test_reset_cursor_asks_for_confirmation_then_resets(browser, active):
    active.fact_cursor = "4711"
    active.tombstone_cursor = "99"
    active.save()
    page = browser.post(reverse(PEERS), {"action": "reset_cursor", "_selected_action": [str(active.pk)]})
    assert page.status_code == 200
    assert "Reset the pull cursors of these peers?" in page.content.decode()
    active.refresh_from_db()
    assert (active.fact_cursor, active.tombstone_cursor) == ("4711", "99")

    response = act(browser, "reset_cursor", [active], post="yes")
    assert shown(response) == ["Reset the cursors of 1 peer(s)."]
    active.refresh_from_db()
    assert (active.fact_cursor, active.tombstone_cursor) == (None, None)
    assert [(e.actor, e.target) for e in events("federation_cursor_reset")] == [("admin:root", active.peer_id)]


# --- pull now ------------------------------------------------------------------------------------


def remote_record(text: str, scope: str = "company") -> dict:
    """A fact as the remote node serves it (WIRE.md §2.5), with a CID that verifies."""
    fields = {
        "entity": "stigmem://remote/user/ada",
        "relation": "memory:note",
        "source": "stigmem://remote/agent/writer",
        "confidence": 1.0,
        "scope": scope,
    }
    cid = compute_cid(value_type="string", value_v=text, **fields)
    return {
        "id": str(uuid.uuid4()),
        **fields,
        "value": {"type": "string", "v": text, "interpret_as": "content"},
        "timestamp": datetime.now(UTC).isoformat(),
        "hlc": f"{now_ms()}.0",
        "received_from": None,
        "valid_until": None,
        "origin_node_id": None,
        "origin_allowed_scopes": None,
        "garden_id": None,
        "cid": cid,
    }


def test_pull_now_ingests_the_peers_facts_and_reports(browser, active):
    good = remote_record("the bridge is open")
    bad = remote_record("nobody may see this", scope="local")
    with responses.RequestsMock() as remote:
        remote.add(
            responses.GET,
            f"{REMOTE}/v1/federation/facts",
            json={"facts": [good, bad], "cursor": "2", "has_more": False},
        )
        remote.add(responses.GET, f"{REMOTE}/v1/federation/tombstones", status=404, json={"detail": "Not Found"})
        response = act(browser, "pull_now", [active])
        facts_calls = [c for c in remote.calls if "/v1/federation/facts" in c.request.url]
    assert len(facts_calls) == 1
    assert facts_calls[0].request.headers["Authorization"].startswith("Bearer ")
    [message] = shown(response)
    assert message.startswith(f"{active.node_id}: ")
    assert "1 fact(s) ingested, 1 rejected" in message
    stored = Fact.objects.get(id=good["id"])
    assert (stored.tenant, stored.value_v, stored.received_from) == ("default", "the bridge is open", active.node_id)
    assert not Fact.objects.filter(id=bad["id"]).exists()
    active.refresh_from_db()
    assert active.fact_cursor == "2"
    assert (active.facts_ingested, active.facts_rejected) == (1, 1)


def test_pull_now_reports_a_failing_peer(browser, active):
    with responses.RequestsMock() as remote:
        remote.add(responses.GET, f"{REMOTE}/v1/federation/facts", body="<html>oops</html>", status=502)
        response = act(browser, "pull_now", [active])
    [message] = shown(response)
    assert message.startswith(f"{active.node_id}: ") and "Error:" in message
    active.refresh_from_db()
    assert active.fact_cursor is None
    assert active.consecutive_failures == 1
    assert not Fact.objects.exists()


def test_pull_now_skips_peers_that_are_not_active(browser, pending):
    with responses.RequestsMock() as remote:
        response = act(browser, "pull_now", [pending])
        assert not remote.calls
    assert shown(response) == [f"{pending.node_id} is pending_approval: not pulled."]


def test_pull_now_leaves_a_peer_another_worker_is_pulling(browser, active):
    Peer.objects.filter(pk=active.pk).update(
        pull_lease_owner="another-worker", pull_lease_until=timezone.now() + timedelta(minutes=5)
    )
    with responses.RequestsMock() as remote:
        response = act(browser, "pull_now", [active])
        assert not remote.calls
    assert shown(response) == [f"{active.node_id}: not pulled, another worker is pulling it right now."]
    active.refresh_from_db()
    assert active.pull_lease_owner == "another-worker"


def test_pull_now_leaves_peers_to_the_schedule_once_its_time_is_spent(browser, active, monkeypatch):
    monkeypatch.setattr(federation_admin, "PULL_NOW_TOTAL_S", 0.0)
    with responses.RequestsMock() as remote:
        response = act(browser, "pull_now", [active])
        assert not remote.calls
    assert shown(response) == [f"{active.node_id}: not pulled now (time is up); the scheduled pull takes it."]


# --- connect -------------------------------------------------------------------------------------


def remote_node() -> tuple[str, str]:
    """A remote node's id and public key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return f"stigmem:node:{uuid.uuid4()}", signing.b64url_encode(public)


def well_known(remote_id: str, pubkey: str) -> dict:
    return {
        "version": "1.0",
        "node_id": remote_id,
        "node_url": REMOTE,
        "auth": "required",
        "federation": "enabled",
        "federation_pubkey": pubkey,
        "federation_version": "0.5",
        "federation_endpoints": {"peers": "/v1/federation/peers", "facts": "/v1/federation/facts", "push": None},
    }


CONNECT_FORM = {
    "url": REMOTE,
    "api_key": "sk_remote_secret_key_1234",
    "scopes": ["company", "public"],
    "tenant": "default",
}


def test_connect_form_loads_with_defaults(browser):
    response = browser.get(reverse(CONNECT))
    assert response.status_code == 200
    html = response.content.decode()
    form = response.context["form"]
    assert form["tenant"].value() == "default"
    assert form["scopes"].value() == ["company", "public"]
    assert 'type="password"' in html
    assert fingerprint(signing.public_key_b64()) in html


def test_connect_registers_the_remote_pending_approval(browser):
    remote_id, pubkey = remote_node()
    with responses.RequestsMock() as remote:
        remote.add(responses.GET, f"{REMOTE}/.well-known/stigmem", json=well_known(remote_id, pubkey))
        remote.add(
            responses.POST,
            f"{REMOTE}/v1/federation/peers",
            status=201,
            json={"peer_id": str(uuid.uuid4()), "status": "pending_approval", "verified_at": None},
        )
        response = browser.post(reverse(CONNECT), CONNECT_FORM)
        posted = [c for c in remote.calls if c.request.method == "POST"]
    assert response.status_code == 200
    assert len(posted) == 1
    assert posted[0].request.headers["Authorization"] == f"Bearer {CONNECT_FORM['api_key']}"
    declaration = json.loads(posted[0].request.body)
    assert declaration["node_id"] == node_id()
    assert declaration["allowed_scopes"] == ["company", "public"]

    peer = Peer.objects.get(node_id=remote_id)
    assert (peer.status, peer.origin, peer.tenant) == (Peer.Status.PENDING_APPROVAL, Peer.Origin.CONNECTED, "default")
    assert peer.allowed_scopes == ["company", "public"]
    html = response.content.decode()
    assert fingerprint(pubkey) in html
    assert fingerprint(signing.public_key_b64()) in html
    assert "pending_approval" in re.search(r'id="remote-status">([^<]*)<', html).group(1)
    assert change_url(peer) in html
    # The remote key is used for that one request only: neither stored nor audited nor shown.
    assert CONNECT_FORM["api_key"] not in html
    assert not any(CONNECT_FORM["api_key"] in json.dumps(e.detail) for e in AuditEvent.objects.all())
    assert not any(CONNECT_FORM["api_key"] in str(getattr(peer, f.attname)) for f in Peer._meta.fields)
    assert [(e.actor, e.target) for e in events("peer_connected")] == [("admin:root", peer.peer_id)]


def test_connect_errors_are_shown_in_the_form(browser):
    remote_id, pubkey = remote_node()
    with responses.RequestsMock() as remote:
        remote.add(responses.GET, f"{REMOTE}/.well-known/stigmem", json=well_known(remote_id, pubkey))
        remote.add(
            responses.POST,
            f"{REMOTE}/v1/federation/peers",
            status=401,
            json={"detail": "invalid api key"},
        )
        response = browser.post(reverse(CONNECT), CONNECT_FORM)
    assert response.status_code == 200
    [error] = response.context["form"].non_field_errors()
    assert "HTTP 401" in error and "invalid api key" in error
    html = response.content.decode()
    assert "Connecting failed." in html
    assert CONNECT_FORM["api_key"] not in html
    assert not Peer.objects.exists()
    assert not AuditEvent.objects.exists()


def test_connect_to_an_unreachable_node_is_a_form_error(browser):
    with responses.RequestsMock():
        # No response registered: every request fails with a connection error.
        response = browser.post(reverse(CONNECT), CONNECT_FORM)
    assert response.status_code == 200
    [error] = response.context["form"].non_field_errors()
    assert "unreachable" in error
    assert not Peer.objects.exists()
    assert not AuditEvent.objects.exists()


def test_connect_is_refused_while_federation_is_off(browser, settings):
    settings.STIGMEM_FEDERATION_ENABLED = False
    assert "Federation is off on this node" in browser.get(reverse(CONNECT)).content.decode()
    with responses.RequestsMock() as remote:
        response = browser.post(reverse(CONNECT), CONNECT_FORM)
        assert not remote.calls
    [error] = response.context["form"].non_field_errors()
    assert "STIGMEM_FEDERATION_ENABLED" in error
    assert not Peer.objects.exists()


def test_connect_form_validation(browser):
    with responses.RequestsMock() as remote:
        response = browser.post(reverse(CONNECT), {**CONNECT_FORM, "scopes": [], "tenant": ""})
        assert not remote.calls
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"scopes", "tenant"}
    assert not Peer.objects.exists()


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/", "http://127.0.0.1:8765/?x=1"])
def test_connect_refuses_a_url_that_is_not_a_node_base_url(browser, url):
    with responses.RequestsMock() as remote:
        response = browser.post(reverse(CONNECT), {**CONNECT_FORM, "url": url})
        assert not remote.calls
    [error] = response.context["form"].non_field_errors()
    assert error.startswith("the node URL ")
    assert not Peer.objects.exists()
    assert not AuditEvent.objects.exists()


# --- who may use these pages ---------------------------------------------------------------------


def test_non_staff_users_are_sent_to_the_login(db, active):
    user = get_user_model().objects.create_user("visitor", password="a-long-test-password")
    client = Client()
    client.force_login(user)
    for url in (reverse(PEERS), change_url(active), reverse(CONNECT), federation_admin.audit_url()):
        response = client.get(url)
        assert response.status_code == 302, url
        assert "/admin/login/" in response["Location"]
    response = client.post(reverse(PEERS), {"action": "suspend", "_selected_action": [str(active.pk)]})
    assert response.status_code == 302
    active.refresh_from_db()
    assert active.status == Peer.Status.ACTIVE


def test_forms_need_the_csrf_token(db, active):
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.create_superuser("root", email="", password="a-long-test-password"))
    with responses.RequestsMock() as remote:
        assert client.post(reverse(CONNECT), CONNECT_FORM).status_code == 403
        assert (
            client.post(reverse(PEERS), {"action": "pull_now", "_selected_action": [str(active.pk)]}).status_code == 403
        )
        assert not remote.calls
    assert not AuditEvent.objects.exists()


def test_staff_with_view_permission_only_cannot_act_or_connect(db, active, pending):
    user = get_user_model().objects.create_user("viewer", password="a-long-test-password", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_peer"))
    client = Client()
    client.force_login(user)
    listing = client.get(reverse(PEERS))
    assert listing.status_code == 200
    assert 'value="suspend"' not in listing.content.decode()
    assert reverse(CONNECT) not in listing.content.decode()
    assert 'value="Suspend"' not in client.get(change_url(active)).content.decode()
    assert client.get(reverse(CONNECT)).status_code == 403
    assert client.post(reverse(CONNECT), CONNECT_FORM).status_code == 403
    client.post(reverse(PEERS), {"action": "suspend", "_selected_action": [str(active.pk)]})
    client.post(
        reverse(PEERS),
        {
            "action": "approve",
            "_selected_action": [str(pending.pk)],
            "post": "yes",
            f"fingerprint_{pending.pk}": fingerprint(pending.federation_pubkey),
        },
    )
    active.refresh_from_db()
    pending.refresh_from_db()
    assert (active.status, pending.status) == (Peer.Status.ACTIVE, Peer.Status.PENDING_APPROVAL)
    assert not AuditEvent.objects.filter(event_type__in=["peer_suspended", "peer_approved"]).exists()
