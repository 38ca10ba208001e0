"""The federation handshake (WIRE.md §6.2): declarations, registration, approval, status changes, connect.

Two nodes become peers in two halves, one on each side: each registers the other (the remote
posts its signed declaration to ``POST /v1/federation/peers``, or our operator runs ``connect``,
which posts ours to the remote and records the remote here), and each operator approves the
other's key by its fingerprint. Nothing is pulled or served before both halves are ``active``.

Registration never trusts the declaration alone: the declared ``node_url`` must serve a
well-known document (no redirects, 5 s) naming the same node and key, and the signature must
verify with that key. A declaration that fails is kept as a ``rejected`` record (the
reference's behaviour) and may be registered again, so a transient failure never blocks a peer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from federation.models import Peer
from stigmem import audit, signing, ssrf
from stigmem.auth import Caller
from stigmem.errors import ApiError, InputInvalid, field_error, not_found
from stigmem.fact_input import SCOPES
from stigmem.node import NODE_ID_PREFIX, node_id
from stigmem.values import text_problem

SIGNED_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Matched with fullmatch: `$` would let a trailing newline through. ASCII digits only.
_SIGNED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_NODE_ID = re.compile(re.escape(NODE_ID_PREFIX) + r"[^\s\x00-\x1f\x7f]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
# [ours] A declaration is a bearer credential for registering: an old one must not be replayable forever.
MAX_DECLARATION_AGE = timedelta(hours=24)
MAX_DECLARATION_SKEW = timedelta(minutes=5)
WELL_KNOWN_TIMEOUT_S = 5.0
# The remote documents we read are small; a peer answering with megabytes is refused, not buffered.
MAX_REMOTE_BODY_BYTES = 256 * 1024
MAX_NODE_ID_LENGTH = 255
MAX_NODE_URL_LENGTH = 2048
MAX_SIGNATURE_LENGTH = 128
MAX_FINGERPRINT_LENGTH = 200
SIGNED_FIELDS = ("allowed_scopes", "federation_pubkey", "node_id", "node_url", "signed_at")
ACTIONS = ("approve", "suspend", "resume", "revoke")

# action -> (statuses it applies to, the status it sets, the audit event)
_TRANSITIONS: dict[str, tuple[frozenset[str], str, str]] = {
    "suspend": (frozenset({Peer.Status.ACTIVE}), Peer.Status.SUSPENDED, "peer_suspended"),
    "resume": (frozenset({Peer.Status.SUSPENDED}), Peer.Status.ACTIVE, "peer_resumed"),
    "revoke": (frozenset(Peer.Status) - {Peer.Status.REVOKED}, Peer.Status.REVOKED, "peer_revoked"),
}


# --- keys and declarations ------------------------------------------------------------------------


def fingerprint(pubkey: str) -> str:
    """What operators compare before approving: ``sha256:`` + hex sha256 of the base64url key string."""
    return "sha256:" + hashlib.sha256(pubkey.encode("utf-8")).hexdigest()


def own_fingerprint() -> str:
    return fingerprint(signing.public_key_b64())


def _signed_bytes(declaration: dict[str, Any]) -> bytes:
    # Exactly the reference's bytes: default ensure_ascii, compact separators, sorted keys.
    signed = {name: declaration[name] for name in SIGNED_FIELDS}
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode("utf-8")


def own_declaration(scopes: list[str]) -> dict[str, Any]:
    """This node's declaration offering ``scopes``, signed now with the node key."""
    declaration: dict[str, Any] = {
        "node_id": node_id(),
        "node_url": settings.STIGMEM_NODE_URL,
        "federation_pubkey": signing.public_key_b64(),
        "allowed_scopes": sorted(set(scopes)),
        "signed_at": datetime.now(UTC).strftime(SIGNED_AT_FORMAT),
    }
    declaration["declaration_sig"] = signing.sign(_signed_bytes(declaration))
    return declaration


def verify_declaration(decl: dict[str, Any], pubkey: str) -> bool:
    """Whether ``declaration_sig`` signs the declaration's fields with ``pubkey``; never raises."""
    try:
        data = _signed_bytes(decl)
    except (KeyError, TypeError, ValueError):
        return False
    return signing.verify(pubkey, data, decl.get("declaration_sig"))


def _canonical_pubkey(pubkey: str) -> str:
    """The key as unpadded base64url (the form fingerprints are taken of); ValueError if not a key."""
    raw = signing.b64url_decode(pubkey)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return signing.b64url_encode(raw)


# --- validation -----------------------------------------------------------------------------------


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a node's base URL, or None."""
    if len(url) > MAX_NODE_URL_LENGTH:
        return f"must be at most {MAX_NODE_URL_LENGTH} characters"
    if (problem := text_problem(url)) is not None:
        return problem
    try:
        parts, _, _ = ssrf.split_url(url)
    except ssrf.UnsafeUrl as exc:
        return str(exc)
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        return "must be a plain http(s) base URL (no query, fragment or whitespace)"
    return None


def _scopes_problem(scopes: Any) -> str | None:
    if not isinstance(scopes, list) or not scopes:
        return "must be a non-empty list"
    if not all(isinstance(s, str) and s in SCOPES for s in scopes):
        return f"every scope must be one of {', '.join(SCOPES)}"
    return None


@dataclass(frozen=True)
class Declaration:
    """A validated declaration body, its fields exactly as sent (the signature covers those)."""

    node_id: str
    node_url: str
    federation_pubkey: str
    allowed_scopes: list[str]
    signed_at: str
    declaration_sig: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "node_url": self.node_url,
            "federation_pubkey": self.federation_pubkey,
            "allowed_scopes": self.allowed_scopes,
            "signed_at": self.signed_at,
            "declaration_sig": self.declaration_sig,
        }

    @property
    def signed_at_time(self) -> datetime:
        return datetime.strptime(self.signed_at, SIGNED_AT_FORMAT).replace(tzinfo=UTC)


def parse_declaration(body: Any) -> Declaration:
    """Validate a ``POST /v1/federation/peers`` body; InputInvalid (422) lists every bad field."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    errors: list[dict[str, Any]] = []

    def check(name: str, expected: type, problem_of) -> None:
        loc = ["body", name]
        if name not in body:
            errors.append(field_error(loc, "Field required", "missing"))
            return
        value = body[name]
        if not isinstance(value, expected):
            kind = "string_type" if expected is str else "list_type"
            errors.append(field_error(loc, f"{name} must be a {'string' if expected is str else 'list'}", kind))
            return
        if (problem := problem_of(value)) is not None:
            errors.append(field_error(loc, f"{name} {problem}", "value_error"))

    def node_id_problem(value: str) -> str | None:
        if len(value) > MAX_NODE_ID_LENGTH or not _NODE_ID.fullmatch(value) or text_problem(value):
            return f"must be '{NODE_ID_PREFIX}<id>' (at most {MAX_NODE_ID_LENGTH} characters, no whitespace)"
        return None

    def pubkey_problem(value: str) -> str | None:
        try:
            _canonical_pubkey(value)
        except ValueError:
            return "must be the base64url encoding of a raw 32-byte Ed25519 public key"
        return None

    def signed_at_problem(value: str) -> str | None:
        try:
            if not _SIGNED_AT.fullmatch(value):
                raise ValueError
            datetime.strptime(value, SIGNED_AT_FORMAT)
        except ValueError:
            return "must be a UTC time formatted as YYYY-MM-DDTHH:MM:SSZ"
        return None

    def signature_problem(value: str) -> str | None:
        if len(value) > MAX_SIGNATURE_LENGTH or not _B64URL.fullmatch(value):
            return f"must be base64url (at most {MAX_SIGNATURE_LENGTH} characters)"
        return None

    check("node_id", str, node_id_problem)
    check("node_url", str, _url_problem)
    check("federation_pubkey", str, pubkey_problem)
    check("allowed_scopes", list, _scopes_problem)
    check("signed_at", str, signed_at_problem)
    check("declaration_sig", str, signature_problem)
    if errors:
        raise InputInvalid(errors)
    return Declaration(**{name: body[name] for name in Declaration.__dataclass_fields__})


def parse_fingerprint_body(body: Any) -> str:
    """The ``pubkey_fingerprint`` of an approve body; InputInvalid (422) if missing or not a string."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    loc = ["body", "pubkey_fingerprint"]
    if "pubkey_fingerprint" not in body:
        raise InputInvalid([field_error(loc, "Field required", "missing")])
    value = body["pubkey_fingerprint"]
    if not isinstance(value, str):
        raise InputInvalid([field_error(loc, "pubkey_fingerprint must be a string", "string_type")])
    if len(value) > MAX_FINGERPRINT_LENGTH or text_problem(value):
        raise InputInvalid([field_error(loc, "pubkey_fingerprint must be 'sha256:<hex>'", "value_error")])
    return value


# --- talking to the remote ------------------------------------------------------------------------


def _storable(text: str, limit: int = 500) -> str:
    """Remote-supplied text made safe for audit rows (PostgreSQL refuses NUL and lone surrogates), truncated."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")[:limit]


class RemoteFailure(Exception):
    """A remote node could not be asked, or answered nothing usable; ``code`` names why."""

    def __init__(self, code: str, message: str):
        message = _storable(message)
        super().__init__(message)
        self.code = code
        self.message = message


class WellKnownUnavailable(RemoteFailure):
    """``<node_url>/.well-known/stigmem`` could not be read as a JSON object."""


def _exchange(method: str, url: str, *, timeout: float, **kwargs: Any) -> tuple[int, bytes]:
    """One request, no redirects, the body read up to MAX_REMOTE_BODY_BYTES; RemoteFailure on any failure."""
    try:
        ssrf.check_url(url, allow_private=settings.STIGMEM_FEDERATION_ALLOW_PRIVATE)
    except ssrf.UnsafeUrl as exc:
        raise RemoteFailure("unsafe_address", f"refusing to connect: {exc}") from None
    # requests' timeout bounds each socket operation; a server dripping bytes is stopped by this deadline.
    deadline = time.monotonic() + timeout
    try:
        with requests.request(method, url, timeout=timeout, allow_redirects=False, stream=True, **kwargs) as response:
            body = bytearray()
            for chunk in response.iter_content(16384):
                body += chunk
                if len(body) > MAX_REMOTE_BODY_BYTES:
                    raise RemoteFailure("response_too_large", f"response larger than {MAX_REMOTE_BODY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise RemoteFailure("unreachable", f"response not complete within {timeout:g} s")
            return response.status_code, bytes(body)
    except requests.RequestException as exc:
        raise RemoteFailure("unreachable", f"{url} is unreachable: {exc}") from None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        return None
    return document if isinstance(document, dict) else None


def fetch_well_known(node_url: str) -> dict[str, Any]:
    """The node's ``/.well-known/stigmem`` document; WellKnownUnavailable (with a reason code) otherwise."""
    url = node_url.rstrip("/") + "/.well-known/stigmem"
    try:
        status, body = _exchange("GET", url, timeout=WELL_KNOWN_TIMEOUT_S, headers={"Accept": "application/json"})
    except RemoteFailure as exc:
        raise WellKnownUnavailable(exc.code, exc.message) from None
    if 300 <= status < 400:
        # A redirect could hand the verification to a host the declaration never named.
        raise WellKnownUnavailable("redirect", f"{url} answered a redirect (HTTP {status}); redirects are not followed")
    if status != 200:
        raise WellKnownUnavailable("unreachable", f"{url} answered HTTP {status}")
    document = _json_object(body)
    if document is None:
        raise WellKnownUnavailable("not_json", f"{url} did not answer a JSON object")
    return document


def _remote_identity(document: dict[str, Any]) -> tuple[str, str]:
    """The (node_id, canonical pubkey) a well-known document publishes; RemoteFailure if federation is off."""
    pubkey = document.get("federation_pubkey")
    if document.get("federation") != "enabled" or not isinstance(pubkey, str):
        raise RemoteFailure("not_federation_enabled", "the node's well-known document does not enable federation")
    remote_id = document.get("node_id")
    if (
        not isinstance(remote_id, str)
        or len(remote_id) > MAX_NODE_ID_LENGTH
        or not _NODE_ID.fullmatch(remote_id)
        or text_problem(remote_id)
    ):
        raise RemoteFailure("not_federation_enabled", "the node's well-known document has no valid node_id")
    try:
        return remote_id, _canonical_pubkey(pubkey)
    except ValueError:
        raise RemoteFailure("not_federation_enabled", "the node's federation_pubkey is not an Ed25519 key") from None


def _verification_failure(decl: Declaration) -> RemoteFailure | None:
    """Why the declaration is not the declared node's own, or None when it is."""
    # The signature first: a forged declaration costs no outbound request.
    if not verify_declaration(decl.as_dict(), decl.federation_pubkey):
        return RemoteFailure("bad_signature", "declaration_sig does not verify with federation_pubkey")
    try:
        remote_id, remote_key = _remote_identity(fetch_well_known(decl.node_url))
    except RemoteFailure as exc:
        return exc
    if remote_id != decl.node_id:
        return RemoteFailure("node_id_mismatch", f"the well-known document names node {remote_id!r}")
    if remote_key != _canonical_pubkey(decl.federation_pubkey):
        return RemoteFailure("pubkey_mismatch", "federation_pubkey differs from the one in the well-known document")
    return None


# --- registration: POST /v1/federation/peers ------------------------------------------------------


def _audit(peer_or_tenant: Peer | str, event: str, *, actor: str, target: str = "", **detail: Any) -> None:
    if isinstance(peer_or_tenant, Peer):
        peer = peer_or_tenant
        audit.record(peer.tenant, event, actor=actor, target=peer.peer_id, detail={"node_id": peer.node_id, **detail})
    else:
        audit.record(peer_or_tenant, event, actor=actor, target=target, detail=detail)


def _refuse(caller: Caller, decl: Declaration, code: str, message: str) -> ApiError:
    """Audit a declaration refused before any record exists; the 400 to raise."""
    with transaction.atomic():
        _audit(
            caller.tenant,
            "peer_registration_rejected",
            actor=caller.entity_uri,
            target=decl.node_id,
            node_id=decl.node_id,
            node_url=decl.node_url,
            reason=code,
            message=message,
        )
    return ApiError(400, message)


def register(caller: Caller, body: Any) -> Peer:
    """Register a declared peer into the caller's tenant: ``pending_approval`` if verified, else ``rejected``."""
    decl = parse_declaration(body)
    now = timezone.now()
    if decl.signed_at_time < now - MAX_DECLARATION_AGE:
        raise _refuse(caller, decl, "stale_declaration", "declaration is stale: signed_at is more than 24 hours ago")
    if decl.signed_at_time > now + MAX_DECLARATION_SKEW:
        raise _refuse(caller, decl, "future_declaration", "declaration signed_at is more than 5 minutes in the future")
    if decl.node_id == node_id():
        raise _refuse(caller, decl, "self", "a node cannot register itself as its own peer")
    existing = Peer.objects.filter(node_id=decl.node_id).first()
    if existing is not None and existing.status != Peer.Status.REJECTED:
        raise ApiError(409, f"peer already registered (status={existing.status})")

    # Outside any transaction: the well-known fetch may take seconds.
    failure = _verification_failure(decl)
    status = Peer.Status.REJECTED if failure else Peer.Status.PENDING_APPROVAL
    fields = {
        "tenant": caller.tenant,
        "node_url": decl.node_url.rstrip("/"),
        "federation_pubkey": _canonical_pubkey(decl.federation_pubkey),
        "allowed_scopes": sorted(set(decl.allowed_scopes)),
        "status": status,
        "origin": Peer.Origin.DECLARED,
        "declaration_sig": decl.declaration_sig,
        "signed_at": decl.signed_at,
        "status_changed_at": timezone.now(),
    }
    try:
        with transaction.atomic():
            if existing is None:
                peer = Peer.objects.create(node_id=decl.node_id, **fields)
            else:
                # Only a record still rejected may be replaced: another registration may have won meanwhile.
                if not Peer.objects.filter(pk=existing.pk, status=Peer.Status.REJECTED).update(**fields):
                    raise IntegrityError("the rejected record changed meanwhile")
                peer = Peer.objects.get(pk=existing.pk)
            detail: dict[str, Any] = {
                "node_url": peer.node_url,
                "allowed_scopes": peer.allowed_scopes,
                "pubkey_fingerprint": fingerprint(peer.federation_pubkey),
                "status": peer.status,
            }
            if failure is not None:
                detail |= {"reason": failure.code, "message": failure.message}
            event = "peer_registration_rejected" if failure else "peer_registered"
            _audit(peer, event, actor=caller.entity_uri, **detail)
    except IntegrityError:
        current = Peer.objects.filter(node_id=decl.node_id).values_list("status", flat=True).first()
        raise ApiError(409, f"peer already registered (status={current or 'unknown'})") from None
    return peer


# --- approval and status changes ------------------------------------------------------------------


def _peer_pk(peer_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(peer_id))
    except ValueError:
        raise not_found("peer") from None


def find_peer(peer_id: str, tenant: str | None = None) -> Peer:
    """The peer (the tenant's, when given), or 404: unknown, malformed id, or another tenant's."""
    peers = Peer.objects.filter(pk=_peer_pk(peer_id))
    peer = (peers if tenant is None else peers.filter(tenant=tenant)).first()
    if peer is None:
        raise not_found("peer")
    return peer


def approve(tenant: str, peer_id: str, pubkey_fingerprint: str, actor: str) -> Peer:
    """Activate a pending peer whose key fingerprint the operator confirmed."""
    pk = _peer_pk(peer_id)
    mismatch = False
    with transaction.atomic():
        peer = Peer.objects.select_for_update().filter(pk=pk, tenant=tenant).first()
        if peer is None:
            raise not_found("peer")
        if peer.status != Peer.Status.PENDING_APPROVAL:
            raise ApiError(409, f"peer is not pending approval (status={peer.status})")
        expected = fingerprint(peer.federation_pubkey)
        supplied = pubkey_fingerprint.strip().lower()
        if not hmac.compare_digest(supplied.encode("utf-8"), expected.encode("utf-8")):
            # Audited and committed: the 400 is raised once this transaction is closed.
            supplied_shown = _storable(pubkey_fingerprint, MAX_FINGERPRINT_LENGTH)
            _audit(peer, "peer_approval_failed", actor=actor, reason="fingerprint mismatch", supplied=supplied_shown)
            mismatch = True
        else:
            now = timezone.now()
            peer.status = Peer.Status.ACTIVE
            peer.established_at = now
            peer.status_changed_at = now
            peer.approved_by = actor[:512]
            # Pulled by the next cycle, not after a full interval.
            peer.next_pull_at = now
            peer.save(update_fields=["status", "established_at", "status_changed_at", "approved_by", "next_pull_at"])
            _audit(peer, "peer_approved", actor=actor, pubkey_fingerprint=expected)
    if mismatch:
        raise ApiError(400, "fingerprint mismatch")
    return peer


def change_status(tenant: str, peer_id: str, action: str, actor: str) -> Peer:
    """``suspend`` (active→suspended), ``resume`` (suspended→active) or ``revoke`` (anything→revoked, final)."""
    if action not in _TRANSITIONS:
        raise not_found("peer action")
    allowed, target_status, event = _TRANSITIONS[action]
    pk = _peer_pk(peer_id)
    with transaction.atomic():
        peer = Peer.objects.select_for_update().filter(pk=pk, tenant=tenant).first()
        if peer is None:
            raise not_found("peer")
        if peer.status not in allowed:
            raise ApiError(409, f"cannot {action} a peer whose status is {peer.status}")
        previous = peer.status
        now = timezone.now()
        peer.status = target_status
        peer.status_changed_at = now
        fields = ["status", "status_changed_at"]
        if target_status == Peer.Status.ACTIVE:
            peer.next_pull_at = now
            fields.append("next_pull_at")
        peer.save(update_fields=fields)
        _audit(peer, event, actor=actor, previous_status=previous, status=target_status)
    return peer


def peer_record(peer: Peer) -> dict[str, Any]:
    """A peer as the API shows it (WIRE.md §6.2), plus its key fingerprint and how it was registered."""
    return {
        "peer_id": peer.peer_id,
        "node_id": peer.node_id,
        "node_url": peer.node_url,
        "status": peer.status,
        "allowed_scopes": peer.allowed_scopes,
        "established_at": peer.established_at.isoformat() if peer.established_at else None,
        "pubkey_fingerprint": fingerprint(peer.federation_pubkey),
        "origin": peer.origin,
    }


def list_peers(tenant: str | None) -> list[Peer]:
    """The tenant's peers (every tenant's when None: the operator's command line), oldest first."""
    peers = Peer.objects.all() if tenant is None else Peer.objects.filter(tenant=tenant)
    return list(peers.order_by("created_at", "id"))


# --- the operator's connect flow ------------------------------------------------------------------


class ConnectFailed(Exception):
    """``connect`` could not complete; the message says why and what to do."""


@dataclass(frozen=True)
class ConnectResult:
    peer: Peer
    # The remote's answer to our declaration: its status for us, or "already_registered" (its 409).
    remote_status: str
    remote_detail: str
    own_fingerprint: str
    peer_fingerprint: str


def _post_declaration(url: str, api_key: str | None, scopes: list[str]) -> tuple[str, str]:
    """Post our declaration to the remote; (its status for us, its detail)."""
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    # The remote fetches our well-known (up to 5 s) before it answers.
    timeout = max(settings.STIGMEM_FEDERATION_TIMEOUT_S, 2 * WELL_KNOWN_TIMEOUT_S)
    endpoint = url + "/v1/federation/peers"
    try:
        status, body = _exchange("POST", endpoint, timeout=timeout, json=own_declaration(scopes), headers=headers)
    except RemoteFailure as exc:
        raise ConnectFailed(f"could not post our declaration: {exc.message}") from None
    answer = _json_object(body) or {}
    detail = answer.get("detail")
    detail_text = _storable(detail if isinstance(detail, str) else json.dumps(detail) if detail is not None else "")
    if status == 201 and isinstance(answer.get("status"), str):
        return answer["status"], detail_text
    if status == 409:
        return "already_registered", detail_text
    hint = ""
    if status in (401, 403):
        hint = " (pass --api-key with a key of the remote that has the federate permission)"
    elif 300 <= status < 400:
        hint = " (redirects are not followed: use the node's exact base URL)"
    raise ConnectFailed(f"{endpoint} refused our declaration: HTTP {status} {detail_text}{hint}".rstrip())


def _check_existing(peer: Peer | None, tenant: str) -> None:
    """Refuse to connect to a node revoked here, or one that is another tenant's live peer."""
    if peer is None:
        return
    if peer.status == Peer.Status.REVOKED:
        raise ConnectFailed(f"{peer.node_id} was revoked here (peer {peer.peer_id}); a revocation is final")
    if peer.tenant != tenant and peer.status != Peer.Status.REJECTED:
        raise ConnectFailed(f"{peer.node_id} is already a peer of tenant {peer.tenant!r} (peer {peer.peer_id})")


def connect(url: str, *, api_key: str | None, scopes: list[str], tenant: str, actor: str) -> ConnectResult:
    """Offer this node to the node at ``url`` and record it here as a peer pending our approval."""
    if not settings.STIGMEM_FEDERATION_ENABLED:
        raise ConnectFailed(
            "federation is not enabled on this node (STIGMEM_FEDERATION_ENABLED): "
            "the remote could not read our key to verify us"
        )
    url = url.strip().rstrip("/")
    if (problem := _url_problem(url)) is not None:
        raise ConnectFailed(f"the node URL {problem}")
    if (problem := _scopes_problem(scopes)) is not None:
        raise ConnectFailed(f"scopes {problem}")
    try:
        remote_id, remote_key = _remote_identity(fetch_well_known(url))
    except RemoteFailure as exc:
        raise ConnectFailed(f"cannot use {url} as a peer: {exc.message}") from None
    if remote_id == node_id():
        raise ConnectFailed(f"{url} is this node itself ({remote_id})")
    # Checked before contacting the remote, and again under the row lock before writing.
    _check_existing(Peer.objects.filter(node_id=remote_id).first(), tenant)

    remote_status, remote_detail = _post_declaration(url, api_key, scopes)

    fields = {
        "tenant": tenant,
        "node_url": url,
        "federation_pubkey": remote_key,
        "allowed_scopes": sorted(set(scopes)),
        "status": Peer.Status.PENDING_APPROVAL,
        "origin": Peer.Origin.CONNECTED,
        "declaration_sig": "",
        "signed_at": "",
        "status_changed_at": timezone.now(),
    }
    replaceable = [Peer.Status.REJECTED, Peer.Status.PENDING_APPROVAL, Peer.Status.PENDING_VERIFICATION]
    try:
        with transaction.atomic():
            peer = Peer.objects.select_for_update().filter(node_id=remote_id).first()
            _check_existing(peer, tenant)
            if peer is None:
                peer = Peer.objects.create(node_id=remote_id, **fields)
            elif peer.status in replaceable:
                Peer.objects.filter(pk=peer.pk).update(**fields)
                peer.refresh_from_db()
            _audit(
                peer,
                "peer_connected",
                actor=actor,
                node_url=url,
                allowed_scopes=sorted(set(scopes)),
                remote_status=remote_status,
                remote_detail=remote_detail,
                status=peer.status,
                pubkey_fingerprint=fingerprint(peer.federation_pubkey),
            )
    except IntegrityError:
        raise ConnectFailed(f"{remote_id} was registered here concurrently; run connect again") from None
    return ConnectResult(
        peer=peer,
        remote_status=remote_status,
        remote_detail=remote_detail,
        own_fingerprint=own_fingerprint(),
        peer_fingerprint=fingerprint(peer.federation_pubkey),
    )
