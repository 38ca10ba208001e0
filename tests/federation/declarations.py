"""A fake remote node for handshake tests: its key, its well-known document, declarations it signs."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import responses
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def b64url(data: bytes) -> str:
    """Plain standard-library base64url, independent of the module under test."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def signed_at(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RemoteNode:
    url: str = "http://remote.example"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    node_id: str = field(default_factory=lambda: f"stigmem:node:{uuid.uuid4()}")

    @property
    def pubkey(self) -> str:
        return b64url(self.key.public_key().public_bytes_raw())

    def well_known(self, **overrides: Any) -> dict[str, Any]:
        document = {
            "version": "1.0",
            "node_id": self.node_id,
            "node_url": self.url,
            "auth": "required",
            "federation": "enabled",
            "source_attestation": "off",
            "federation_pubkey": self.pubkey,
            "federation_version": "0.5",
            "federation_endpoints": {"peers": "/v1/federation/peers", "facts": "/v1/federation/facts", "push": None},
        }
        return {**document, **overrides}

    def serve_well_known(self, mock: responses.RequestsMock, **overrides: Any) -> None:
        mock.add(responses.GET, f"{self.url}/.well-known/stigmem", json=self.well_known(**overrides))

    def declaration(
        self, scopes: list[str] | None = None, when: str | None = None, signer: Ed25519PrivateKey | None = None
    ) -> dict[str, Any]:
        """A declaration as the reference signs it: Ed25519 over the sorted compact JSON of five fields."""
        fields = {
            "node_id": self.node_id,
            "node_url": self.url,
            "federation_pubkey": self.pubkey,
            "allowed_scopes": sorted(scopes or ["company", "public"]),
            "signed_at": when or signed_at(),
        }
        payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return {**fields, "declaration_sig": b64url((signer or self.key).sign(payload))}
