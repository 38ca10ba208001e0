"""Ingest of one page of facts pulled from a peer (WIRE.md §6.5).

Every record is checked on its own: a record that breaks a rule is audited (one row) and
skipped, never raised, so one bad fact cannot stall the page or the cursor. The accepted ones go
through the one write path in a single ``assert_facts`` call, which keeps the peer's fact id and
timestamp, merges the peer's HLC into the node clock and applies the head and conflict rules of
local writes; a fact already stored (same id, or same content) is a no-op there.

Rules, in the order they are checked (the first broken one is the reason recorded):

- the record is a JSON object with a uuid ``id`` (``not_an_object``, ``missing_id``, ``invalid_id``);
  an id already stored here is a duplicate and is not looked at further;
- no ``garden_id`` (``garden_fact``): gardens are local and never replicate;
- the assert-body fields validate as for ``POST /v1/facts`` (``malformed``), plus the origin fields;
- ``interpret_as`` is ``content`` (``instruction``): a peer cannot plant instructions;
- the scope is one of the agreement's and not ``local`` (``local_scope``, ``scope_not_agreed``);
- ``timestamp`` is an ISO datetime and ``hlc`` an HLC value (``invalid_timestamp``, ``invalid_hlc``);
- the HLC is at most STIGMEM_FEDERATION_MAX_FUTURE_SKEW_S ahead of now (``hlc_future_skew``);
- a ``cid``, when present, is the content's (``cid_mismatch``, audited as an integrity rejection).
  The reference hashes an integral number as ``"1"`` but serves it as ``1.0``: for an integral
  number either spelling may match, and the fact is stored with the spelling that did, so its
  CID here equals the peer's.

History older than 30 days is accepted; the page's old facts are audited once as an anomaly.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction

from federation.models import Peer
from stigmem import audit, bulk
from stigmem.cid import is_cid
from stigmem.clock import now_ms
from stigmem.errors import ApiError
from stigmem.fact_input import SCOPES, FactInput, RemoteOrigin, parse_fact_body
from stigmem.facts import MAX_AUDITED_IDS, Origin, assert_facts
from stigmem.hlc import Hlc
from stigmem.models import Fact
from stigmem.values import TypedValue, parse_iso_datetime, text_problem

logger = logging.getLogger(__name__)

FACT_REJECTED = "federation_fact_rejected"
INTEGRITY_REJECTED = "federation_integrity_rejected"
HLC_ANOMALY = "federation_hlc_anomaly"
# Facts stamped longer ago than this are accepted but noted: a peer replaying old history.
OLD_HLC_MS = 30 * 86_400_000
# Untrusted text copied into an audit row is cut to this many characters.
MAX_AUDITED_TEXT = 200
MAX_ORIGIN_LENGTH = 255
_ID_CHUNK = 500


@dataclass
class IngestResult:
    ingested: int = 0
    duplicates: int = 0
    rejected: int = 0
    # The newest timestamp among the facts stored by this page (for the replication lag).
    newest_timestamp: datetime | None = None
    # Rejections by reason code.
    reasons: dict[str, int] = field(default_factory=dict)


class _Rejected(Exception):
    def __init__(self, reason: str, event: str = FACT_REJECTED, **detail: Any):
        super().__init__(reason)
        self.reason = reason
        self.event = event
        self.detail = detail


def clip(value: Any, limit: int = MAX_AUDITED_TEXT) -> Any:
    """A peer-supplied value made safe to store: short text with no NUL or lone surrogate (or its type)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    # PostgreSQL refuses NUL in text and JSON, and lone surrogates cannot be encoded at all.
    text = value[:limit].replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def ingest_page(peer: Peer, records: list[Any]) -> IngestResult:
    """Validate and store one page of fact records from ``peer``; never raises for a bad record.

    Rejection audit rows and the accepted facts are written in one transaction (the caller's,
    when it has one, so that they commit with the cursor).
    """
    result = IngestResult()
    now = now_ms()
    audit_rows: list = []
    candidates: list[tuple[dict[str, Any], uuid.UUID]] = []

    def reject(problem: _Rejected, fact_id: Any) -> None:
        result.rejected += 1
        result.reasons[problem.reason] = result.reasons.get(problem.reason, 0) + 1
        detail = {"reason": problem.reason, "fact_id": clip(fact_id), **problem.detail}
        audit_rows.append(
            audit.entry(peer.tenant, problem.event, actor=peer.node_id, target=peer.peer_id, detail=detail)
        )

    for record in records:
        try:
            candidates.append((record, _fact_id(record)))
        except _Rejected as problem:
            reject(problem, record.get("id") if isinstance(record, dict) else None)

    known = _stored_ids([fact_id for _, fact_id in candidates])
    inputs: list[FactInput] = []
    old: list[FactInput] = []
    for record, fact_id in candidates:
        if fact_id in known:
            result.duplicates += 1
            continue
        try:
            item = _validate(peer, record, fact_id, now)
        except _Rejected as problem:
            reject(problem, str(fact_id))
            continue
        except Exception:
            # A record that trips over a bug here must not fail the page: the cursor would never
            # move past it and the peer would be stuck (the reference's failure mode).
            logger.exception("could not validate fact %s from %s", fact_id, peer.node_id)
            reject(_Rejected("unprocessable"), str(fact_id))
            continue
        inputs.append(item)
        if item.remote.hlc.wall_ms < now - OLD_HLC_MS:
            old.append(item)

    if old:
        oldest = min(item.remote.hlc for item in old)
        audit_rows.append(
            audit.entry(
                peer.tenant,
                HLC_ANOMALY,
                actor=peer.node_id,
                target=peer.peer_id,
                detail={
                    "reason": "hlc_older_than_30_days",
                    "count": len(old),
                    "oldest_hlc": str(oldest),
                    "fact_ids": [str(item.remote.fact_id) for item in old[:MAX_AUDITED_IDS]],
                },
            )
        )

    with transaction.atomic():
        if audit_rows:
            bulk.insert(audit_rows)
        outcomes = assert_facts(peer.tenant, inputs, origin=Origin.FEDERATION, actor=peer.node_id) if inputs else []

    for outcome in outcomes:
        if not outcome.created:
            result.duplicates += 1
            continue
        result.ingested += 1
        stamp = outcome.fact.timestamp
        if result.newest_timestamp is None or stamp > result.newest_timestamp:
            result.newest_timestamp = stamp
    return result


def _fact_id(record: Any) -> uuid.UUID:
    if not isinstance(record, dict):
        raise _Rejected("not_an_object", got=type(record).__name__)
    raw = record.get("id")
    if raw is None:
        raise _Rejected("missing_id")
    if not isinstance(raw, str) or len(raw) > 64:
        raise _Rejected("invalid_id")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _Rejected("invalid_id") from None


def _stored_ids(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these fact ids are already stored: one query per chunk, not one per fact."""
    found: set[uuid.UUID] = set()
    for start in range(0, len(ids), _ID_CHUNK):
        found.update(Fact.objects.filter(id__in=ids[start : start + _ID_CHUNK]).values_list("id", flat=True))
    return found


def _validate(peer: Peer, record: dict[str, Any], fact_id: uuid.UUID, now: int) -> FactInput:
    if record.get("garden_id") is not None:
        raise _Rejected("garden_fact")
    try:
        item = parse_fact_body(record, ("fact",))
    except ApiError as exc:
        raise _Rejected("malformed", errors=_problems(exc)) from None
    if item.value.interpret_as != "content":
        raise _Rejected("instruction")
    if item.scope == "local":
        raise _Rejected("local_scope", scope="local")
    if item.scope not in peer.allowed_scopes:
        raise _Rejected("scope_not_agreed", scope=item.scope, agreed=list(peer.allowed_scopes))
    timestamp = _timestamp(record.get("timestamp"))
    hlc = _hlc(record.get("hlc"))
    if hlc.wall_ms > now + settings.STIGMEM_FEDERATION_MAX_FUTURE_SKEW_S * 1000:
        raise _Rejected("hlc_future_skew", hlc=str(hlc), ahead_ms=hlc.wall_ms - now)
    origin_node_id, origin_scopes = _origin(peer, record)
    item = _matching_cid(item, record)
    item.remote = RemoteOrigin(
        fact_id=fact_id,
        timestamp=timestamp,
        hlc=hlc,
        received_from=peer.node_id,
        origin_node_id=origin_node_id,
        origin_allowed_scopes=origin_scopes,
    )
    return item


def _problems(exc: ApiError) -> list[dict[str, Any]]:
    """Where a record failed validation: the locations and error types (no peer text)."""
    if isinstance(exc.detail, list):
        return [{"loc": [clip(part) for part in e.get("loc", [])], "type": clip(e.get("type"))} for e in exc.detail]
    if isinstance(exc.detail, dict):
        return [{"code": clip(exc.detail.get("code")), "status": exc.status}]
    return [{"status": exc.status}]


def _timestamp(raw: Any) -> datetime:
    try:
        if not isinstance(raw, str):
            raise ValueError
        moment = parse_iso_datetime(raw)
    except ValueError:
        raise _Rejected("invalid_timestamp", timestamp=clip(raw)) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _hlc(raw: Any) -> Hlc:
    try:
        if not isinstance(raw, str):
            raise ValueError
        return Hlc.parse(raw)
    except ValueError:
        raise _Rejected("invalid_hlc", hlc=clip(raw)) from None


def _origin(peer: Peer, record: dict[str, Any]) -> tuple[str, list[str]]:
    """The origin fields: the record's when it names them, else the peer is the origin."""
    origin = record.get("origin_node_id")
    if origin is None:
        origin = peer.node_id
    elif not isinstance(origin, str) or not origin or len(origin) > MAX_ORIGIN_LENGTH or text_problem(origin):
        raise _Rejected("malformed", errors=[{"loc": ["fact", "origin_node_id"], "type": "string_type"}])
    scopes = record.get("origin_allowed_scopes")
    if scopes is None:
        return origin, list(peer.allowed_scopes)
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s in SCOPES for s in scopes):
        raise _Rejected("malformed", errors=[{"loc": ["fact", "origin_allowed_scopes"], "type": "list_type"}])
    return origin, sorted(set(scopes))


def _integral_spellings(v: Any) -> list[str]:
    """Both ``str`` spellings of an integral JSON number (``"1"`` and ``"1.0"``), else none."""
    try:
        if isinstance(v, bool):
            return []
        if isinstance(v, int):
            return [str(v), str(float(v))]
        if isinstance(v, float) and v.is_integer():
            return [str(int(v)), str(v)]
    except OverflowError:  # an integer too large for a float has only the one spelling
        return [str(v)]
    return []


def _matching_cid(item: FactInput, record: dict[str, Any]) -> FactInput:
    remote_cid = record.get("cid")
    if remote_cid is None or remote_cid == item.cid:
        return item
    if isinstance(remote_cid, str) and is_cid(remote_cid) and item.value.value_type == "number":
        for spelling in _integral_spellings(record["value"].get("v")):
            if spelling == item.value.value_v:
                continue
            # replace() re-runs __post_init__, which computes the CID over the new spelling.
            candidate = replace(item, value=TypedValue("number", spelling, item.value.interpret_as))
            if candidate.cid == remote_cid:
                return candidate
    raise _Rejected("cid_mismatch", event=INTEGRITY_REJECTED, stored_cid=clip(remote_cid), computed_cid=item.cid)
