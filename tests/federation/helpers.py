"""Fake remote peers for federation tests: a Peer row with its own key, and tokens it would mint."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from federation.models import Peer
from stigmem import signing
from stigmem.clock import now_ms
from stigmem.node import node_id


def make_remote_peer(
    tenant: str = "default", scopes: Iterable[str] = ("company", "public"), status: str = "active"
) -> tuple[Peer, Ed25519PrivateKey]:
    """A Peer row for a remote node with a freshly generated key, and that key."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    remote = uuid.uuid4()
    peer = Peer.objects.create(
        tenant=tenant,
        node_id=f"stigmem:node:{remote}",
        node_url=f"https://{remote.hex[:12]}.peer.example",
        federation_pubkey=signing.b64url_encode(public),
        allowed_scopes=sorted(set(scopes)),
        status=status,
    )
    return peer, key


def peer_token(peer: Peer, private_key: Ed25519PrivateKey, **overrides: Any) -> str:
    """A valid EdDSA token as ``peer`` would mint it for a request to us; ``overrides`` replace claims."""
    issued = now_ms()
    claims: dict[str, Any] = {
        "iss": peer.node_id,
        "sub": node_id(),
        "iat": issued,
        "exp": issued + 60_000,
        "nonce": str(uuid.uuid4()),
        "scopes": list(peer.allowed_scopes),
    }
    claims.update(overrides)
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers={"typ": "JWT"})
