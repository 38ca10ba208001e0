"""Standard Webhooks signing of delivery requests (WIRE.md §5.3).

``webhook-signature`` is ``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`` where the
key is the base64-decoded part of the ``whsec_`` secret. During a rotation the previous secret
signs too, space-separated, so a receiver still holding the old secret keeps verifying.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

from subscriptions.models import Subscription

SECRET_PREFIX = "whsec_"


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    # Tolerate unpadded secrets, as the reference verifier does.
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode("ascii")


def signing_secrets(subscription: Subscription, now: datetime) -> tuple[str, ...]:
    """The secrets that sign now: the current one, plus the previous one until it expires."""
    expires = subscription.previous_secret_expires_at
    if subscription.previous_secret and expires is not None and expires > now:
        return (subscription.signing_secret, subscription.previous_secret)
    return (subscription.signing_secret,)


def signature_headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(secret, msg_id, timestamp, body) for secret in secrets_),
    }
