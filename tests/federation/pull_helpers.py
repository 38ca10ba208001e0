"""A fake remote peer for pull tests: the wire records it serves and its HTTP endpoints (``responses``)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import responses
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.models import Peer
from stigmem import signing
from stigmem.cid import compute_cid
from stigmem.clock import now_ms
from stigmem.models import AuditEvent
from stigmem.node import node_id
from stigmem.tombstones import REVOCATION_SIGNED_FIELDS, TOMBSTONE_SIGNED_FIELDS

ENTITY = "stigmem://remote.example/user/u1"
SOURCE = "stigmem://remote.example/agent/writer"


def remote_fact(**overrides: Any) -> dict[str, Any]:
    """A fact record as a peer serves it (WIRE.md §2.5), with a CID over its content.

    ``overrides`` replace fields after the CID is computed, except ``value``, ``entity``,
    ``relation``, ``source``, ``scope`` and ``confidence``, which the CID covers; pass
    ``cid=...`` to serve another CID.
    """
    content = {
        "entity": ENTITY,
        "relation": "memory:note",
        "value": {"type": "string", "v": f"note {uuid.uuid4().hex[:8]}", "interpret_as": "content"},
        "source": SOURCE,
        "scope": "company",
        "confidence": 1.0,
    }
    for name in list(content):
        if name in overrides:
            content[name] = overrides.pop(name)
    value = content["value"]
    record = {
        "id": str(uuid.uuid4()),
        **content,
        "timestamp": datetime.now(UTC).isoformat(),
        "hlc": f"{now_ms()}.0",
        "received_from": None,
        "valid_until": None,
        "origin_node_id": None,
        "origin_allowed_scopes": None,
        "garden_id": None,
        "contradicted": False,
        "derived_from": [],
        "cid": cid_of(content, value_v(value)),
    }
    record.update(overrides)
    return record


def value_v(value: dict[str, Any]) -> str:
    v = value.get("v")
    if value["type"] == "null":
        return "null"
    if value["type"] == "boolean":
        return "true" if v else "false"
    return str(v)


def cid_of(content: dict[str, Any], spelled: str) -> str:
    return compute_cid(
        entity=content["entity"],
        relation=content["relation"],
        value_type=content["value"]["type"],
        value_v=spelled,
        source=content["source"],
        confidence=content["confidence"],
        scope=content["scope"],
    )


def hlc_at(moment: datetime, counter: int = 0) -> str:
    return f"{int(moment.timestamp() * 1000)}.{counter}"


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


# --- the peer's endpoints ----------------------------------------------------------------------


def facts_url(peer: Peer) -> str:
    return peer.node_url.rstrip("/") + "/v1/federation/facts"


def tombstones_url(peer: Peer) -> str:
    return peer.node_url.rstrip("/") + "/v1/federation/tombstones"


def query(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}


def check_token(request, peer: Peer) -> dict[str, Any]:
    """The peer token on a request we sent: signed by our node key, addressed to ``peer``."""
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    public = Ed25519PublicKey.from_public_bytes(signing.b64url_decode(signing.public_key_b64()))
    claims = jwt.decode(token, public, algorithms=["EdDSA"], options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == node_id()
    assert claims["sub"] == peer.node_id
    return claims


def serve_pages(
    mock: responses.RequestsMock, peer: Peer, pages: list[list[Any]], *, seen: list[dict] | None = None
) -> None:
    """Serve ``pages`` of fact records by cursor: page i has cursor ``p<i+1>`` and has_more until the last."""

    def answer(request):
        params = query(request)
        claims = check_token(request, peer)
        if seen is not None:
            seen.append({"params": params, "nonce": claims["nonce"]})
        cursor = params.get("cursor")
        index = 0 if cursor is None else int(cursor[1:])
        if index >= len(pages):
            return 200, {}, json.dumps({"facts": [], "cursor": cursor, "has_more": False})
        body = {"facts": pages[index], "cursor": f"p{index + 1}", "has_more": index + 1 < len(pages)}
        return 200, {}, json.dumps(body)

    mock.add_callback(responses.GET, facts_url(peer), callback=answer)


def serve_json(mock: responses.RequestsMock, url: str, body: Any, status: int = 200, **headers: str) -> None:
    mock.add(responses.GET, url, body=json.dumps(body), status=status, headers=headers)


def no_tombstones(mock: responses.RequestsMock, peer: Peer) -> None:
    """The reference's default: the tombstone endpoint does not exist."""
    mock.add(responses.GET, tombstones_url(peer), json={"detail": "Not Found"}, status=404)


def serve_tombstones(
    mock: responses.RequestsMock, peer: Peer, tombstones: list[Any], revocations: Iterable[Any] = ()
) -> None:
    serve_json(
        mock,
        tombstones_url(peer),
        {"tombstones": tombstones, "revocations": list(revocations), "cursor": "t1", "has_more": False},
    )


# --- signed records of the peer ----------------------------------------------------------------


def _sign(key: Ed25519PrivateKey, record: dict[str, Any], fields: tuple[str, ...]) -> str:
    return signing.b64url_encode(key.sign(signing.canonical_json({name: record[name] for name in fields})))


def key_id_of(key: Ed25519PrivateKey) -> str:
    return hashlib.sha256(key.public_key().public_bytes_raw()).hexdigest()[:16]


def peer_tombstone(
    peer: Peer, key: Ed25519PrivateKey, entity: str = ENTITY, scope: str = "*", **overrides: Any
) -> dict[str, Any]:
    """A tombstone record signed by ``key`` as the peer would serve it."""
    record = {
        "id": f"tomb_{uuid.uuid4()}",
        "entity_uri": entity,
        "scope": scope,
        "reason": "erasure request",
        "signed_by": peer.node_id,
        "key_id": key_id_of(key),
        "created_at": datetime.now(UTC).isoformat(),
        "legal_hold": False,
    }
    record.update(overrides)
    record["signature"] = _sign(key, record, TOMBSTONE_SIGNED_FIELDS)
    return record


def peer_revocation(peer: Peer, key: Ed25519PrivateKey, tombstone: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    revoked_at = datetime.now(UTC).isoformat()
    record = {
        "id": f"tombrevoke_{uuid.uuid4()}",
        "tombstone_id": tombstone["id"],
        "reason": "restored",
        "revoked_by": "stigmem://remote.example/agent/admin",
        "signed_by": peer.node_id,
        "key_id": key_id_of(key),
        "revoked_at": revoked_at,
        "created_at": revoked_at,
    }
    record.update(overrides)
    record["signature"] = _sign(key, record, REVOCATION_SIGNED_FIELDS)
    return record


# --- assertions --------------------------------------------------------------------------------


def audit_rows(event_type: str | None = None, **match: Any) -> list[AuditEvent]:
    rows = AuditEvent.objects.order_by("id")
    if event_type is not None:
        rows = rows.filter(event_type=event_type)
    return [row for row in rows if all(row.detail.get(k) == v for k, v in match.items())]


def audit_types() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("event_type", flat=True))
