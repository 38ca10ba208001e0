"""The node's Ed25519 signing identity (WIRE.md §6.1): one key pair, stored or configured, stable."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.core.exceptions import ImproperlyConfigured

from stigmem import signing
from stigmem.models import NodeIdentity
from stigmem.node import ensure_identity

SEED = bytes(range(32))


def _decode(text: str) -> bytes:
    """Plain standard-library base64url decoding, independent of the module under test."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _expected_public(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


@pytest.fixture
def generated(db, settings):
    """No configured key: the node generates one and stores it."""
    settings.STIGMEM_NODE_SIGNING_KEY = ""
    ensure_identity()


def test_generated_key_is_stored_and_the_same_in_every_process(generated):
    assert NodeIdentity.objects.get(pk=1).signing_key == ""
    public = signing.public_key_b64()

    stored = NodeIdentity.objects.get(pk=1).signing_key
    seed = _decode(stored)
    assert len(seed) == 32
    assert "=" not in stored and "=" not in public
    assert _decode(public) == _expected_public(seed)
    assert signing.public_key_b64() == public  # stable across calls

    # Another process (an empty cache) loads the stored key, never a new one.
    signing.clear_cache()
    assert signing.public_key_b64() == public
    assert NodeIdentity.objects.get(pk=1).signing_key == stored


def test_a_key_stored_by_another_process_first_is_the_one_used(generated):
    # Another process won the race to store its key before this one loaded anything.
    other = base64.urlsafe_b64encode(SEED).decode().rstrip("=")
    NodeIdentity.objects.filter(pk=1).update(signing_key=other)

    assert _decode(signing.public_key_b64()) == _expected_public(SEED)
    assert NodeIdentity.objects.get(pk=1).signing_key == other


def test_the_key_is_cached_for_the_process(transactional_db, settings):
    # Outside a transaction (a request in autocommit) the loaded key is kept for the process.
    settings.STIGMEM_NODE_SIGNING_KEY = ""
    public = signing.public_key_b64()
    NodeIdentity.objects.filter(pk=1).update(signing_key=base64.urlsafe_b64encode(SEED).decode())

    assert signing.public_key_b64() == public
    signing.clear_cache()
    assert _decode(signing.public_key_b64()) == _expected_public(SEED)


@pytest.mark.parametrize(
    "configured",
    [
        base64.urlsafe_b64encode(SEED).decode().rstrip("="),  # unpadded
        base64.urlsafe_b64encode(SEED).decode(),  # padded
    ],
)
def test_configured_key_is_used_and_not_stored(db, settings, configured):
    settings.STIGMEM_NODE_SIGNING_KEY = configured
    ensure_identity()

    assert _decode(signing.public_key_b64()) == _expected_public(SEED)
    assert signing.key_id() == hashlib.sha256(_expected_public(SEED)).hexdigest()[:16]
    assert NodeIdentity.objects.get(pk=1).signing_key == ""


@pytest.mark.parametrize(
    "configured",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(SEED[:31]).decode(),  # too short
        base64.urlsafe_b64encode(SEED + b"x").decode(),  # too long
        base64.standard_b64encode(b"\xfb" * 32).decode(),  # standard alphabet ('+', '/'), not base64url
    ],
)
def test_an_invalid_configured_key_is_a_configuration_error(db, settings, configured):
    settings.STIGMEM_NODE_SIGNING_KEY = configured

    with pytest.raises(ImproperlyConfigured, match=r"STIGMEM_NODE_SIGNING_KEY must be the base64url encoding"):
        signing.public_key_b64()
    with pytest.raises(ImproperlyConfigured):
        signing.sign(b"data")


def test_a_corrupt_stored_key_is_a_configuration_error(generated):
    NodeIdentity.objects.filter(pk=1).update(signing_key="short")

    with pytest.raises(ImproperlyConfigured, match=r"NodeIdentity.signing_key must be the base64url encoding"):
        signing.public_key_b64()


def test_key_id_is_16_hex_of_the_sha256_of_the_raw_public_key(generated):
    key_id = signing.key_id()

    assert re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert key_id == hashlib.sha256(_decode(signing.public_key_b64())).hexdigest()[:16]
    assert signing.key_id_of(signing.public_key_b64()) == key_id
    assert signing.key_id_of(signing.public_key_b64() + "=") == key_id


@pytest.mark.parametrize("garbage", ["", "!!", "AAAA", base64.urlsafe_b64encode(b"x" * 33).decode()])
def test_key_id_of_refuses_what_is_not_a_public_key(garbage):
    with pytest.raises(ValueError):
        signing.key_id_of(garbage)


def test_signature_verifies_with_the_cryptography_package_alone(generated):
    data = b'{"a":1}'
    signature = signing.sign(data)

    assert "=" not in signature
    assert len(_decode(signature)) == 64
    public = Ed25519PublicKey.from_public_bytes(_decode(signing.public_key_b64()))
    public.verify(_decode(signature), data)  # raises on a bad signature
    with pytest.raises(InvalidSignature):
        public.verify(_decode(signature), b'{"a":2}')


def test_verify_accepts_good_signatures_padded_or_not(generated):
    data = "ünïcode payload".encode()
    signature = signing.sign(data)
    public = signing.public_key_b64()

    assert signing.verify(public, data, signature)
    assert signing.verify(public + "=", data, signature + "==")


def test_verify_refuses_tampering(generated):
    data = b"the signed bytes"
    signature = signing.sign(data)
    public = signing.public_key_b64()
    raw = bytearray(_decode(signature))
    raw[10] ^= 0x01
    flipped = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    other_key = base64.urlsafe_b64encode(_expected_public(SEED)).decode().rstrip("=")

    assert not signing.verify(public, b"the signed bytez", signature)
    assert not signing.verify(public, data, flipped)
    assert not signing.verify(other_key, data, signature)


@pytest.mark.parametrize(
    ("public", "signature"),
    [
        ("", "AAAA"),
        ("!!not-base64!!", "AAAA"),
        ("AAAA", "AAAA"),  # a 3-byte "key"
        (None, "AAAA"),
        (123, "AAAA"),
        ("KEY", None),
        ("KEY", "*"),
        ("KEY", "A"),  # impossible base64 length
        ("KEY", ""),
    ],
)
def test_verify_never_raises_on_garbage(generated, public, signature):
    if public == "KEY":
        public = signing.public_key_b64()
    assert signing.verify(public, b"data", signature) is False


def test_verify_never_raises_on_data_that_is_not_bytes(generated):
    assert signing.verify(signing.public_key_b64(), "text, not bytes", signing.sign(b"x")) is False


def test_canonical_json_is_sorted_compact_utf8():
    encoded = signing.canonical_json({"b": [1, True, None], "a": "é ✓", "c": {"z": 1, "y": 'q"uote'}})

    assert encoded == '{"a":"é ✓","b":[1,true,null],"c":{"y":"q\\"uote","z":1}}'.encode()
    assert signing.canonical_json({"x": 1, "y": 2}) == signing.canonical_json({"y": 2, "x": 1})
