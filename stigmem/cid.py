"""Content ids (WIRE.md §2.3): sha256 over seven canonical fields, identical to the reference."""

from __future__ import annotations

import hashlib
import json
import re

CID_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


def compute_cid(
    *,
    entity: str,
    relation: str,
    value_type: str,
    value_v: str,
    source: str,
    confidence: float,
    scope: str,
) -> str:
    body = {
        "confidence": float(confidence),
        "entity": entity,
        "relation": relation,
        "scope": scope,
        "source": source,
        "value_type": value_type,
        "value_v": value_v,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_cid(value: str) -> bool:
    return CID_PATTERN.match(value) is not None
