"""Peer tokens (WIRE.md §6.3): EdDSA JWTs with millisecond times, one nonce per request.

``mint`` makes the token our puller sends; ``authenticate`` checks one a peer sent us and
answers 401 ``{"detail": <code>}`` with the reference's codes. Rejections of a token signed
by a registered peer are audited one row each; the others (no token, garbage, unknown issuer,
a signature that does not verify with the named peer's key) can come from anyone at any rate,
so they go to the aggregated auth-failure counter like bad API keys do.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from federation import metrics
from federation.models import Peer, PeerNonce
from stigmem import audit, signing
from stigmem.clock import now_ms
from stigmem.errors import ApiError
from stigmem.node import node_id

# Tokens we mint live this long; the peer's clock may differ by the leeway either way.
TOKEN_LIFETIME_MS = 60_000
LEEWAY_MS = 30_000
# A token issued longer ago than this is refused even if its exp says otherwise.
MAX_AGE_MS = 5 * 60_000
# [ours] exp - iat above this is refused: a long-lived token is a replayable credential.
MAX_LIFETIME_MS = 60 * 60_000
MAX_NONCE_LENGTH = 64


class TokenRejected(ApiError):
    """A 401 with one of the reference's codes as ``detail``."""

    def __init__(self, code: str):
        super().__init__(401, code, headers={"WWW-Authenticate": "Bearer"})
        self.code = code


@dataclass(frozen=True)
class PeerCall:
    """An authenticated peer request: who sent it and the token's claims."""

    peer: Peer
    claims: dict[str, Any]

    @property
    def scopes(self) -> set[str]:
        scopes = self.claims.get("scopes")
        return {s for s in scopes if isinstance(s, str)} if isinstance(scopes, list) else set()


def mint(peer: Peer) -> str:
    """A fresh token for one request to ``peer`` (new nonce, iat now, 60 s life)."""
    issued = now_ms()
    claims = {
        "iss": node_id(),
        "sub": peer.node_id,
        "iat": issued,
        "exp": issued + TOKEN_LIFETIME_MS,
        "nonce": str(uuid.uuid4()),
        "scopes": sorted(peer.allowed_scopes),
    }
    return jwt.encode(claims, signing.private_key(), algorithm="EdDSA", headers={"typ": "JWT"})


def _bearer(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _reject_anonymous(request: HttpRequest, code: str, issuer: str | None = None) -> TokenRejected:
    metrics.TOKEN_REJECTIONS.labels(reason=code).inc()
    reason = f"peer_token:{code}" if issuer is None else f"peer_token:{code}:{issuer}"
    audit.auth_failures.note(reason, request.META.get("REMOTE_ADDR") or "unknown")
    return TokenRejected(code)


def _reject(peer: Peer, code: str, detail: dict[str, Any] | None = None) -> TokenRejected:
    metrics.TOKEN_REJECTIONS.labels(reason=code).inc()
    event_type = "peer_token_replayed" if code == "nonce_already_seen" else "peer_token_rejected"
    audit.record(
        peer.tenant, event_type, actor=peer.node_id, target=peer.peer_id, detail={"reason": code, **(detail or {})}
    )
    return TokenRejected(code)


def _is_ms(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**16


def authenticate(request: HttpRequest) -> PeerCall:
    """The peer that sent this request, or TokenRejected (401) saying why not."""
    token = _bearer(request)
    if token is None:
        raise _reject_anonymous(request, "peer token required")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _reject_anonymous(request, "malformed token") from None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer or len(issuer) > 255 or "\x00" in issuer:
        raise _reject_anonymous(request, "malformed token")
    peer = Peer.objects.filter(node_id=issuer).first()
    if peer is None:
        raise _reject_anonymous(request, "peer not registered")
    if header.get("alg") != "EdDSA" or not _signature_valid(token, peer.federation_pubkey):
        # Anyone can name a registered issuer: until the signature verifies this is not the peer
        # speaking, so it is counted, not audited row by row. The issuer is in the reason so an
        # operator sees which peer's tokens fail (a key rotated without re-registering).
        raise _reject_anonymous(request, "invalid_signature", peer.node_id)
    if peer.status != Peer.Status.ACTIVE:
        raise _reject(peer, "peer_not_approved", {"status": peer.status})
    issued, expires = claims.get("iat"), claims.get("exp")
    if not _is_ms(issued) or not _is_ms(expires):
        raise _reject(peer, "malformed token", {"why": "iat and exp must be integer epoch milliseconds"})
    now = now_ms()
    if expires + LEEWAY_MS < now:
        raise _reject(peer, "token_expired")
    if claims.get("sub") != node_id():
        raise _reject(peer, "invalid_sub")
    if issued > now + LEEWAY_MS:
        raise _reject(peer, "iat_in_future")
    if issued < now - MAX_AGE_MS:
        raise _reject(peer, "iat_too_old")
    if expires - issued > MAX_LIFETIME_MS:
        raise _reject(peer, "token_lifetime_too_long")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_LENGTH or "\x00" in nonce:
        raise _reject(peer, "missing_nonce")
    if not _claim_nonce(issuer, nonce, expires):
        raise _reject(peer, "nonce_already_seen")
    return PeerCall(peer, claims)


def _signature_valid(token: str, public_key_b64: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(signing.b64url_decode(public_key_b64))
        # The signature only: jwt.decode would also judge claims (a non-string `sub`, any `aud`,
        # times it reads as seconds) and turn those into a false invalid_signature.
        jwt.PyJWS().decode(token, key, algorithms=["EdDSA"])
    except (jwt.PyJWTError, ValueError):
        return False
    return True


def _claim_nonce(issuer: str, nonce: str, expires_ms: int) -> bool:
    """Record the nonce; False when it was already used. Durable before the request proceeds."""
    # Kept until the token could no longer pass the exp and age checks, whichever ends later.
    keep_until = timezone.now() + timedelta(milliseconds=MAX_AGE_MS + LEEWAY_MS)
    expiry = datetime.fromtimestamp((expires_ms + LEEWAY_MS) / 1000, tz=UTC)
    try:
        with transaction.atomic():
            PeerNonce.objects.create(issuer=issuer, nonce=nonce, expires_at=max(keep_until, expiry))
    except IntegrityError:
        return False
    return True


def prune_nonces() -> int:
    """Delete nonces whose tokens can no longer be accepted; returns how many."""
    deleted, _ = PeerNonce.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted
