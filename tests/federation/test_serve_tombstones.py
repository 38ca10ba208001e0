"""Serving tombstones and revocations to peers (WIRE.md §6.6), through the HTTP API."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from stigmem import signing
from stigmem.models import AuditEvent, Tombstone, TombstoneRevocation
from stigmem.tombstones import create_tombstone, revoke_tombstone, verify_revocation, verify_tombstone
from tests.federation.helpers import make_remote_peer, peer_token

ADMIN = "stigmem://test/agent/admin"


@pytest.fixture
def remote(db):
    return make_remote_peer()


def tomb(name: str, scope: str = "company", tenant: str = "default") -> Tombstone:
    tombstone, created = create_tombstone(
        tenant=tenant, entity_uri=f"stigmem://testnode/user/{name}", scope=scope, reason=f"forget {name}", actor=ADMIN
    )
    assert created
    return tombstone


def revoke(tombstone: Tombstone) -> TombstoneRevocation:
    return revoke_tombstone(tenant=tombstone.tenant, tombstone_id=tombstone.id, reason="restored", actor=ADMIN)


def received(peer_node_id: str, name: str) -> Tombstone:
    """A tombstone as ingest stores one from a peer (signed by that peer, origin_node_id set)."""
    now = timezone.now()
    return Tombstone.objects.create(
        id=f"tomb_{uuid.uuid4()}",
        tenant="default",
        entity_uri=f"stigmem://othernode/user/{name}",
        scope="company",
        signed_by=peer_node_id,
        key_id="0" * 16,
        signature="x",
        created_at=now,
        created_at_text=now.isoformat(),
        origin_node_id=peer_node_id,
    )


def pull(peer, key, token: str | None = None, **params):
    url = "/v1/federation/tombstones" + (f"?{urlencode(params)}" if params else "")
    return APIClient().get(url, HTTP_AUTHORIZATION=f"Bearer {token or peer_token(peer, key)}")


def page_of(response) -> dict:
    assert response.status_code == 200, response.content
    return response.json()


def ids(records: list[dict]) -> list[str]:
    return [record["id"] for record in records]


def snapshot() -> tuple[int, int, int]:
    return Tombstone.objects.count(), TombstoneRevocation.objects.count(), AuditEvent.objects.count()


# --- what is served ---------------------------------------------------------------------------


def test_serves_own_tombstones_signed_with_the_node_key(remote):
    peer, key = remote
    first, second = tomb("alice"), tomb("bob", scope="public")

    page = page_of(pull(peer, key))

    assert ids(page["tombstones"]) == [first.id, second.id]
    assert page["revocations"] == [] and page["has_more"] is False
    assert page["cursor"] is not None
    for record in page["tombstones"]:
        assert verify_tombstone(record, signing.public_key_b64())
        assert record["signed_by"] == first.signed_by
    assert page["tombstones"][0]["reason"] == "forget alice"


def test_every_scope_tombstones_and_permitted_scopes_only(remote, settings):
    peer, key = remote
    everywhere, company = tomb("a", scope="*"), tomb("b", scope="company")
    tomb("c", scope="local")
    team = tomb("d", scope="team")

    assert ids(page_of(pull(peer, key))["tombstones"]) == [everywhere.id, company.id]
    settings.STIGMEM_FEDERATION_ALLOW_TEAM = True
    # Team also needs the agreement and the token to name it.
    assert ids(page_of(pull(peer, key))["tombstones"]) == [everywhere.id, company.id]
    team_peer, team_key = make_remote_peer(scopes=("team",))
    assert ids(page_of(pull(team_peer, team_key))["tombstones"]) == [everywhere.id, team.id]


def test_token_scopes_narrow_what_is_served(remote):
    peer, key = remote
    tomb("a", scope="company")
    public = tomb("b", scope="public")

    page = page_of(pull(peer, key, token=peer_token(peer, key, scopes=["public"])))
    assert ids(page["tombstones"]) == [public.id]


def test_revocations_of_unpermitted_scopes_are_not_served(remote):
    peer, key = remote
    revoke(tomb("a", scope="local"))
    shown = tomb("b", scope="company")
    revocation = revoke(shown)

    page = page_of(pull(peer, key))
    assert ids(page["tombstones"]) == [shown.id]
    assert ids(page["revocations"]) == [revocation.id]


def test_tombstones_received_from_peers_are_not_served(remote):
    peer, key = remote
    other, _ = make_remote_peer()
    from_caller = received(peer.node_id, "x")
    from_third = received(other.node_id, "y")
    # Even one revoked here stays the originating node's business.
    revoke(from_third)
    own = tomb("z")

    page = page_of(pull(peer, key))
    assert ids(page["tombstones"]) == [own.id]
    assert page["revocations"] == []
    assert from_caller.id not in str(page)


def test_another_tenants_tombstones_are_not_served(db):
    peer_a, key_a = make_remote_peer(tenant="tenant-a")
    a = tomb("a", tenant="tenant-a")
    revoke(tomb("b", tenant="tenant-b"))
    tomb("c")

    page = page_of(pull(peer_a, key_a))
    assert ids(page["tombstones"]) == [a.id]
    assert page["revocations"] == []


# --- revocations ------------------------------------------------------------------------------


def test_a_revocation_reaches_a_peer_that_already_pulled_the_tombstone(remote):
    peer, key = remote
    tombstone = tomb("alice")
    first = page_of(pull(peer, key))
    assert ids(first["tombstones"]) == [tombstone.id]

    assert page_of(pull(peer, key, cursor=first["cursor"]))["tombstones"] == []
    revocation = revoke(tombstone)
    later = page_of(pull(peer, key, cursor=first["cursor"]))

    assert later["tombstones"] == []
    assert ids(later["revocations"]) == [revocation.id]
    assert later["revocations"][0]["tombstone_id"] == tombstone.id
    assert verify_revocation(later["revocations"][0], signing.public_key_b64())
    assert later["cursor"] != first["cursor"]
    assert page_of(pull(peer, key, cursor=later["cursor"])) == {
        "tombstones": [],
        "revocations": [],
        "cursor": later["cursor"],
        "has_more": False,
    }


def test_a_new_peer_gets_a_revoked_tombstone_then_its_revocation(remote):
    peer, key = remote
    tombstone = tomb("alice")
    revocation = revoke(tombstone)

    one = page_of(pull(peer, key, limit=1))
    assert ids(one["tombstones"]) == [tombstone.id] and one["revocations"] == [] and one["has_more"] is True
    two = page_of(pull(peer, key, limit=1, cursor=one["cursor"]))
    assert two["tombstones"] == [] and ids(two["revocations"]) == [revocation.id] and two["has_more"] is False


# --- paging -----------------------------------------------------------------------------------


def test_paging_covers_tombstones_and_revocations_once_each_in_order(remote):
    peer, key = remote
    made = [tomb(f"u{i}") for i in range(4)]
    revocations = [revoke(made[1]), revoke(made[3])]
    made.append(tomb("u4"))

    seen_tombstones, seen_revocations, shapes = [], [], []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = page_of(pull(peer, key, **params))
        seen_tombstones += ids(page["tombstones"])
        seen_revocations += ids(page["revocations"])
        shapes.append((len(page["tombstones"]), len(page["revocations"]), page["has_more"]))
        cursor = page["cursor"]
        if not page["has_more"]:
            break

    assert seen_tombstones == [t.id for t in made]
    assert seen_revocations == [r.id for r in revocations]
    # Creation and revocation order: u0 u1 u2 u3 | revoke u1, revoke u3 | u4.
    assert shapes == [(2, 0, True), (2, 0, True), (0, 2, True), (1, 0, False)]


def test_events_at_the_same_instant_page_without_loss_or_repeat(remote):
    peer, key = remote
    made = [tomb(f"u{i}") for i in range(3)]
    revocation = revoke(made[0])
    # Force a tie on the event time: order falls back to kind, then id.
    instant = timezone.now() - timedelta(seconds=5)
    Tombstone.objects.filter(id__in=[t.id for t in made]).update(created_at=instant)
    TombstoneRevocation.objects.filter(id=revocation.id).update(revoked_at=instant)

    served = []
    cursor = None
    for _ in range(10):
        page = page_of(pull(peer, key, limit=1, **({"cursor": cursor} if cursor else {})))
        served += ids(page["tombstones"]) + ids(page["revocations"])
        cursor = page["cursor"]
        if not page["has_more"]:
            break

    assert served == [*sorted(t.id for t in made), revocation.id]


def test_default_limit_is_200(remote):
    peer, key = remote
    for i in range(201):
        tomb(f"u{i}")
    page = page_of(pull(peer, key))
    assert len(page["tombstones"]) == 200 and page["has_more"] is True
    assert len(page_of(pull(peer, key, limit=500))["tombstones"]) == 201


def test_an_empty_first_page_has_a_null_cursor(remote):
    peer, key = remote
    assert page_of(pull(peer, key)) == {"tombstones": [], "revocations": [], "cursor": None, "has_more": False}


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",
        "1",
        "1.0",
        "1.0.",
        "1.2.tomb_x",
        "-1.0.tomb_x",
        "1.0.tomb x",
        "1.0.tomb_x\x00",
        "1.0.tomb_x\n",
        "999999999999999999.0.tomb_x",
        "1" * 19 + ".0.tomb_x",
        "1.0." + "a" * 49,
    ],
)
def test_a_malformed_cursor_is_422(remote, cursor):
    peer, key = remote
    tomb("a")
    before = snapshot()

    response = pull(peer, key, cursor=cursor)

    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "cursor"]]
    assert snapshot() == before


@pytest.mark.parametrize("limit", ["0", "501", "x"])
def test_a_bad_limit_is_422(remote, limit):
    peer, key = remote
    before = snapshot()
    response = pull(peer, key, limit=limit)
    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["query", "limit"]]
    assert snapshot() == before


def test_no_permitted_scopes_is_403(db):
    peer, key = make_remote_peer(scopes=("local",))
    tomb("a", scope="*")
    before = snapshot()
    response = pull(peer, key)
    assert response.status_code == 403
    assert response.json() == {"detail": "no permitted scopes"}
    assert snapshot() == before


def test_no_token_is_401(remote):
    tomb("a")
    before = snapshot()
    response = APIClient().get("/v1/federation/tombstones")
    assert response.status_code == 401
    assert response.json() == {"detail": "peer token required"}
    assert snapshot() == before


def test_a_suspended_peer_is_401(db):
    peer, key = make_remote_peer(status="suspended")
    tomb("a")
    response = pull(peer, key)
    assert response.status_code == 401
    assert response.json() == {"detail": "peer_not_approved"}
    assert AuditEvent.objects.filter(event_type="peer_token_rejected", target=peer.peer_id).count() == 1
