"""Peer tokens (WIRE.md §6.3): minting, verifying, every rejection code with its audit trail, the nonce store."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.test import RequestFactory
from django.utils import timezone

from federation import tokens
from federation.models import Peer, PeerNonce
from stigmem import audit, signing
from stigmem.clock import now_ms
from stigmem.models import AuditEvent
from stigmem.node import node_id
from tests.federation.helpers import make_remote_peer, peer_token

MINUTE = 60_000


def request_with(token: str | None, scheme: str = "Bearer"):
    headers = {} if token is None else {"HTTP_AUTHORIZATION": f"{scheme} {token}"}
    return RequestFactory().get("/v1/federation/facts", REMOTE_ADDR="203.0.113.7", **headers)


def rejection(token: str | None, scheme: str = "Bearer") -> str:
    with pytest.raises(tokens.TokenRejected) as caught:
        tokens.authenticate(request_with(token, scheme))
    assert caught.value.status == 401
    assert caught.value.body() == {"detail": caught.value.code}
    return caught.value.code


def peer_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type__startswith="peer_token").order_by("id"))


def counted_failures() -> list[dict]:
    """The aggregated auth-failure rows written for this window."""
    audit.auth_failures.flush()
    return [e.detail for e in AuditEvent.objects.filter(event_type="auth_failure").order_by("id")]


def hand_signed(claims: dict, key: Ed25519PrivateKey, header: dict | None = None) -> str:
    """A JWS built by hand: PyJWT refuses to encode some of the malformed claims tested here."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    signing_input = f"{part(header or {'alg': 'EdDSA', 'typ': 'JWT'})}.{part(claims)}"
    return f"{signing_input}.{base64.urlsafe_b64encode(key.sign(signing_input.encode())).decode().rstrip('=')}"


def valid_claims(peer: Peer, **overrides) -> dict:
    now = now_ms()
    claims = {"iss": peer.node_id, "sub": node_id(), "iat": now, "exp": now + MINUTE, "nonce": str(uuid.uuid4())}
    return {**claims, **overrides}


def _segment(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture
def remote(db):
    return make_remote_peer()


# --- minting and the round trip -------------------------------------------------------------------


def test_minted_token_has_the_reference_shape(db):
    peer, _ = make_remote_peer(scopes=["public", "company"])
    before = now_ms()
    token = tokens.mint(peer)
    after = now_ms()
    header, payload, signature = token.split(".")
    assert _segment(header) == {"alg": "EdDSA", "typ": "JWT"}
    claims = _segment(payload)
    assert set(claims) == {"iss", "sub", "iat", "exp", "nonce", "scopes"}
    assert (claims["iss"], claims["sub"], claims["scopes"]) == (node_id(), peer.node_id, ["company", "public"])
    assert before <= claims["iat"] <= after  # milliseconds, not seconds
    assert claims["exp"] - claims["iat"] == MINUTE
    assert uuid.UUID(claims["nonce"]).version == 4
    public = Ed25519PublicKey.from_public_bytes(signing.b64url_decode(signing.public_key_b64()))
    public.verify(base64.urlsafe_b64decode(signature + "=="), f"{header}.{payload}".encode())
    assert tokens.mint(peer) != token  # a new nonce every time


def test_mint_then_authenticate_round_trip(db):
    # This node registered as a peer of itself: what it mints, it must accept.
    ourselves = Peer.objects.create(
        tenant="default",
        node_id=node_id(),
        node_url="http://127.0.0.1:8765",
        federation_pubkey=signing.public_key_b64(),
        allowed_scopes=["company", "public"],
        status=Peer.Status.ACTIVE,
    )
    call = tokens.authenticate(request_with(tokens.mint(ourselves)))
    assert call.peer == ourselves
    assert call.scopes == {"company", "public"}
    assert PeerNonce.objects.filter(issuer=node_id()).count() == 1


def test_a_remote_peers_token_is_accepted_once(remote):
    peer, key = remote
    token = peer_token(peer, key, scopes=["public", 3, "company"])
    call = tokens.authenticate(request_with(token))
    assert call.peer == peer
    assert call.scopes == {"public", "company"}
    nonce = PeerNonce.objects.get()
    assert (nonce.issuer, nonce.nonce) == (peer.node_id, call.claims["nonce"])
    assert not peer_events()


def test_expired_within_the_leeway_is_accepted(remote):
    peer, key = remote
    now = now_ms()
    tokens.authenticate(request_with(peer_token(peer, key, iat=now - MINUTE, exp=now - 20_000)))
    tokens.authenticate(request_with(peer_token(peer, key, iat=now + 20_000, exp=now + MINUTE)))


def test_the_authorization_scheme_is_case_insensitive(remote):
    peer, key = remote
    assert tokens.authenticate(request_with(peer_token(peer, key), scheme="bearer")).peer == peer


# --- rejections that name no verified peer: counted, not audited row by row ----------------------


def test_no_token_is_peer_token_required(db):
    assert rejection(None) == "peer token required"
    assert rejection("", scheme="Bearer") == "peer token required"
    assert rejection("sk_some_api_key", scheme="Basic") == "peer token required"
    assert not peer_events()
    (row,) = counted_failures()
    assert (row["reason"], row["ip"], row["count"]) == ("peer_token:peer token required", "203.0.113.7", 3)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        hand_signed({"iss": 12}, Ed25519PrivateKey.generate()),
        jwt.encode({"sub": "x"}, Ed25519PrivateKey.generate(), algorithm="EdDSA"),
        jwt.encode({"iss": "stigmem:node:a\x00b"}, Ed25519PrivateKey.generate(), algorithm="EdDSA"),
        jwt.encode({"iss": "x" * 300}, Ed25519PrivateKey.generate(), algorithm="EdDSA"),
    ],
)
def test_garbage_is_malformed_token(db, token):
    assert rejection(token) == "malformed token"
    assert not peer_events()
    assert [row["reason"] for row in counted_failures()] == ["peer_token:malformed token"]


def test_an_unknown_issuer_is_peer_not_registered(db):
    stranger = Ed25519PrivateKey.generate()
    now = now_ms()
    claims = {"iss": "stigmem:node:nobody", "sub": node_id(), "iat": now, "exp": now + MINUTE, "nonce": "n"}
    assert rejection(jwt.encode(claims, stranger, algorithm="EdDSA")) == "peer not registered"
    assert not peer_events()
    assert [row["reason"] for row in counted_failures()] == ["peer_token:peer not registered"]
    assert not PeerNonce.objects.exists()


def test_a_token_signed_by_another_key_is_invalid_signature(remote):
    peer, _ = remote
    forged = peer_token(peer, Ed25519PrivateKey.generate())
    assert rejection(forged) == "invalid_signature"
    # Anyone can name a registered issuer: counted, with the issuer, never one audit row per request.
    assert not peer_events()
    assert [row["reason"] for row in counted_failures()] == [f"peer_token:invalid_signature:{peer.node_id}"]
    assert not PeerNonce.objects.exists()


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
def test_an_algorithm_other_than_eddsa_is_invalid_signature(remote, algorithm):
    peer, _ = remote
    now = now_ms()
    claims = {"iss": peer.node_id, "sub": node_id(), "iat": now, "exp": now + MINUTE, "nonce": str(uuid.uuid4())}
    # HS256 keyed with the peer's public key: the classic algorithm-confusion forgery.
    key = peer.federation_pubkey.encode() if algorithm == "HS256" else None
    assert rejection(jwt.encode(claims, key, algorithm=algorithm)) == "invalid_signature"
    assert not peer_events()
    assert not PeerNonce.objects.exists()


def test_a_pending_peers_forged_token_says_invalid_signature_not_its_status(db):
    peer, _ = make_remote_peer(status=Peer.Status.PENDING_APPROVAL)
    assert rejection(peer_token(peer, Ed25519PrivateKey.generate())) == "invalid_signature"
    assert not peer_events()


# --- rejections of a token the registered peer signed: one audit row each -----------------------


@pytest.mark.parametrize("status", ["pending_approval", "rejected", "suspended", "revoked"])
def test_a_peer_that_is_not_active_is_peer_not_approved(db, status):
    peer, key = make_remote_peer(status=status)
    assert rejection(peer_token(peer, key)) == "peer_not_approved"
    (event,) = peer_events()
    assert (event.tenant, event.event_type, event.actor, event.target) == (
        "default",
        "peer_token_rejected",
        peer.node_id,
        peer.peer_id,
    )
    assert event.detail == {"reason": "peer_not_approved", "status": status}
    assert not PeerNonce.objects.exists()


def _claims(now: int) -> dict[str, dict]:
    return {
        "token_expired": {"iat": now - 2 * MINUTE, "exp": now - 31_000},
        "invalid_sub": {"sub": "stigmem:node:someone-else"},
        "iat_in_future": {"iat": now + 2 * MINUTE, "exp": now + 3 * MINUTE},
        "iat_too_old": {"iat": now - 6 * MINUTE, "exp": now + MINUTE},
        "token_lifetime_too_long": {"iat": now, "exp": now + 61 * MINUTE},
        "missing_nonce": {},
        "malformed token": {"iat": str(now)},
    }


@pytest.mark.parametrize(
    "code",
    [
        "token_expired",
        "invalid_sub",
        "iat_in_future",
        "iat_too_old",
        "token_lifetime_too_long",
        "missing_nonce",
        "malformed token",
    ],
)
def test_each_claim_rejection_has_its_code_and_audit_row(remote, code):
    peer, key = remote
    overrides = _claims(now_ms())[code]
    claims = valid_claims(peer, **overrides)
    if code == "missing_nonce":
        del claims["nonce"]
    assert rejection(hand_signed(claims, key)) == code
    (event,) = peer_events()
    assert (event.event_type, event.actor, event.target, event.detail["reason"]) == (
        "peer_token_rejected",
        peer.node_id,
        peer.peer_id,
        code,
    )
    assert not PeerNonce.objects.exists()
    assert not counted_failures()


@pytest.mark.parametrize("nonce", ["", 12, None, "n" * 65, "a\x00b"])
def test_an_unusable_nonce_is_missing_nonce(remote, nonce):
    peer, key = remote
    assert rejection(hand_signed(valid_claims(peer, nonce=nonce), key)) == "missing_nonce"
    assert not PeerNonce.objects.exists()


def test_a_non_string_sub_is_invalid_sub_not_a_signature_error(remote):
    peer, key = remote
    assert rejection(hand_signed(valid_claims(peer, sub=5), key)) == "invalid_sub"


def test_an_aud_claim_does_not_break_verification(remote):
    peer, key = remote
    assert tokens.authenticate(request_with(peer_token(peer, key, aud="anyone"))).peer == peer


def test_a_replayed_token_is_nonce_already_seen(remote):
    peer, key = remote
    token = peer_token(peer, key)
    tokens.authenticate(request_with(token))
    assert rejection(token) == "nonce_already_seen"
    (event,) = peer_events()
    assert (event.event_type, event.detail["reason"], event.target) == (
        "peer_token_replayed",
        "nonce_already_seen",
        peer.peer_id,
    )
    assert PeerNonce.objects.count() == 1


def test_the_nonce_store_is_persistent_and_per_issuer(remote):
    peer, key = remote
    other, other_key = make_remote_peer()
    nonce = str(uuid.uuid4())
    tokens.authenticate(request_with(peer_token(peer, key, nonce=nonce)))
    # A new token (fresh iat) reusing the nonce: refused because the row is in the database.
    PeerNonce.objects.get(issuer=peer.node_id, nonce=nonce)
    assert rejection(peer_token(peer, key, nonce=nonce, iat=now_ms() + 1)) == "nonce_already_seen"
    # Another issuer's nonce space is its own.
    assert tokens.authenticate(request_with(peer_token(other, other_key, nonce=nonce))).peer == other
    # Kept at least until the token could no longer pass the age check.
    kept = PeerNonce.objects.get(issuer=peer.node_id, nonce=nonce)
    assert kept.expires_at >= timezone.now() + timedelta(minutes=5)


# --- pruning --------------------------------------------------------------------------------------


def test_prune_nonces_deletes_only_expired_rows(db):
    now = timezone.now()
    PeerNonce.objects.create(issuer="stigmem:node:a", nonce="old-1", expires_at=now - timedelta(seconds=1))
    PeerNonce.objects.create(issuer="stigmem:node:a", nonce="old-2", expires_at=now - timedelta(hours=2))
    PeerNonce.objects.create(issuer="stigmem:node:a", nonce="live", expires_at=now + timedelta(minutes=1))
    assert tokens.prune_nonces() == 2
    assert list(PeerNonce.objects.values_list("nonce", flat=True)) == ["live"]
    assert tokens.prune_nonces() == 0


@pytest.mark.parametrize("lifetime_ms", [MINUTE, 50 * MINUTE])
def test_a_nonce_outlives_every_chance_of_its_token_being_accepted(remote, lifetime_ms):
    # Pruning is safe only if a row is kept until its token fails the age check and the exp check.
    peer, key = remote
    issued = now_ms()
    tokens.authenticate(request_with(peer_token(peer, key, iat=issued, exp=issued + lifetime_ms)))
    kept_until = PeerNonce.objects.get().expires_at
    assert kept_until >= datetime.fromtimestamp((issued + tokens.MAX_AGE_MS) / 1000, tz=UTC)
    assert kept_until >= datetime.fromtimestamp((issued + lifetime_ms + tokens.LEEWAY_MS) / 1000, tz=UTC)
    assert tokens.prune_nonces() == 0
