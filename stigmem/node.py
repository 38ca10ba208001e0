"""This node's identity: its persisted ``node_id`` and its URI authority."""

from __future__ import annotations

import uuid
from functools import cache
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from stigmem.models import NodeIdentity

NODE_ID_PREFIX = "stigmem:node:"


def _configured_node_id() -> str | None:
    raw = settings.STIGMEM_NODE_ID
    if not raw:
        return None
    return raw if raw.startswith(NODE_ID_PREFIX) else NODE_ID_PREFIX + raw


def ensure_identity() -> NodeIdentity:
    """Create the identity on first start; refuse a STIGMEM_NODE_ID that contradicts it."""
    configured = _configured_node_id()
    identity, _ = NodeIdentity.objects.get_or_create(
        pk=1, defaults={"node_id": configured or f"{NODE_ID_PREFIX}{uuid.uuid4()}"}
    )
    if configured and identity.node_id != configured:
        raise ImproperlyConfigured(
            f"STIGMEM_NODE_ID is {configured!r} but this node's database belongs to "
            f"{identity.node_id!r}; a node id never changes"
        )
    return identity


@cache
def node_id() -> str:
    return ensure_identity().node_id


def node_authority() -> str:
    """The authority part of URIs this node mints (``stigmem://<authority>/...``)."""
    return (urlsplit(settings.STIGMEM_NODE_URL).netloc or "localhost").lower()
