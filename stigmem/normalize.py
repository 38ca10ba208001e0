"""Entity and source URI normalization (WIRE.md §2.4).

The algorithm must agree with the reference's normative one byte for byte, because the
normalized strings are hashed into CIDs that other nodes recompute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FORMAL = re.compile(r"^stigmem://([^/]+)/([^/]+)/(.+)$")
_WHITESPACE = re.compile(r"\s+")

INFORMAL_WARNING = "informal entity URI form is deprecated; use stigmem://<authority>/<type>/<id>"


class UriInvalid(ValueError):
    """The string cannot be normalized (empty, or a formal URI with an empty part)."""


@dataclass(frozen=True)
class NormalizedUri:
    uri: str
    informal: bool


def normalize_uri(raw: str) -> NormalizedUri:
    stripped = raw.strip()
    if not stripped:
        raise UriInvalid("entity URI must not be empty or whitespace")
    formal = _FORMAL.match(stripped)
    if formal is None:
        return NormalizedUri(_WHITESPACE.sub("-", stripped.lower()), informal=True)
    authority = formal.group(1).strip().lower()
    kind = formal.group(2).strip().lower()
    ident = _WHITESPACE.sub("-", formal.group(3).strip().lower())
    if not (authority and kind and ident):
        raise UriInvalid(f"formal URI has an empty component: {raw!r}")
    return NormalizedUri(f"stigmem://{authority}/{kind}/{ident}", informal=False)


def normalize_query_uri(raw: str) -> str:
    """Normalize a query filter; an unnormalizable filter matches nothing, verbatim."""
    try:
        return normalize_uri(raw).uri
    except UriInvalid:
        return raw
