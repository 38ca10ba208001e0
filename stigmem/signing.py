"""The node's Ed25519 signing identity (WIRE.md §6.1) and the canonical JSON it signs.

One key pair per node: the raw 32-byte private seed comes from ``STIGMEM_NODE_SIGNING_KEY``
(base64url, padded or not) or is generated once and stored in ``NodeIdentity.signing_key`` so
that every process of the node signs with the same key. Public keys and signatures travel as
base64url without padding; padded input is accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from stigmem.models import NodeIdentity
from stigmem.node import ensure_identity

_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}\Z")

_lock = threading.Lock()
_cached_key: Ed25519PrivateKey | None = None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    """Strict base64url decoding, padded or not; ValueError on anything else."""
    if not isinstance(text, str) or not _B64URL.match(text):
        raise ValueError("not base64url")
    unpadded = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from None


def _key_from_seed(encoded: str, origin: str) -> Ed25519PrivateKey:
    try:
        seed = b64url_decode(encoded.strip())
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ImproperlyConfigured(
            f"{origin} must be the base64url encoding of a raw 32-byte Ed25519 private key "
            f'(for example the output of `python -c "import os, base64; '
            f"print(base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip('='))\"`)"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)


def _load_key() -> tuple[Ed25519PrivateKey, bool]:
    """The node's private key, and whether it may be cached for the life of the process."""
    configured = settings.STIGMEM_NODE_SIGNING_KEY
    if configured:
        return _key_from_seed(configured, "STIGMEM_NODE_SIGNING_KEY"), True
    stored = ensure_identity().signing_key
    if not stored:
        # Every process may get here at once: each proposes a key, the first conditional update
        # wins, and everyone re-reads the winner.
        proposal = b64url_encode(Ed25519PrivateKey.generate().private_bytes_raw())
        NodeIdentity.objects.filter(pk=1, signing_key="").update(signing_key=proposal)
        stored = NodeIdentity.objects.values_list("signing_key", flat=True).get(pk=1)
    # Inside a transaction the stored key may still be rolled back (a freshly generated one, or
    # this transaction's own update): only a key read in autocommit is known to be durable.
    return _key_from_seed(stored, "NodeIdentity.signing_key"), not connection.in_atomic_block


def _private_key() -> Ed25519PrivateKey:
    global _cached_key
    key = _cached_key
    if key is not None:
        return key
    with _lock:
        if _cached_key is not None:
            return _cached_key
        key, durable = _load_key()
        if durable:
            _cached_key = key
        return key


def private_key() -> Ed25519PrivateKey:
    """The node's private key, for signers that need the key object itself (peer tokens)."""
    return _private_key()


def clear_cache() -> None:
    """Forget the loaded key (tests; a process reloads it from settings or the database)."""
    global _cached_key
    with _lock:
        _cached_key = None


def _public_bytes() -> bytes:
    return _private_key().public_key().public_bytes_raw()


def public_key_b64() -> str:
    """The node's public key: base64url of the raw 32 bytes, no padding."""
    return b64url_encode(_public_bytes())


def _key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def key_id() -> str:
    """First 16 hex characters of sha256(raw public key)."""
    return _key_id(_public_bytes())


def key_id_of(public_key_b64: str) -> str:
    """The key id of a base64url public key (a peer's); ValueError when it is not one."""
    raw = b64url_decode(public_key_b64)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return _key_id(raw)


def sign(data: bytes) -> str:
    """Ed25519 signature of ``data`` with the node key, base64url without padding."""
    return b64url_encode(_private_key().sign(data))


def verify(public_key_b64: str, data: bytes, signature_b64: str) -> bool:
    """Whether ``signature_b64`` is a valid signature of ``data`` by ``public_key_b64``.

    Never raises: malformed keys or signatures (wrong type, length or alphabet) are False.
    """
    try:
        public_key = Ed25519PublicKey.from_public_bytes(b64url_decode(public_key_b64))
        public_key.verify(b64url_decode(signature_b64), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (non-ASCII kept as is, like the reference's canonicaljson)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
