"""Turning an assert body (WIRE.md §2.1) into a validated, normalized ``FactInput``.

Validation collects every field error of a body into one 422, in the reference's shape.
Semantic errors keep their own status: 400 ``invalid_entity_uri``, 413 for oversized values.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stigmem.cid import CID_PATTERN, compute_cid
from stigmem.errors import InputInvalid, coded, field_error
from stigmem.hlc import Hlc
from stigmem.limits import MAX_DERIVED_FROM, MAX_RELATION_LENGTH, MAX_URI_LENGTH
from stigmem.normalize import INFORMAL_WARNING, UriInvalid, normalize_uri
from stigmem.values import TypedValue, parse_iso_datetime, parse_value, text_problem

SCOPES = ("local", "team", "company", "public")
_GARDEN_URI = re.compile(r"^stigmem://[^/\s]+/garden/([^/\s]+)$")


@dataclass(frozen=True)
class RemoteOrigin:
    """Where a fact received from a peer came from; it keeps its id and timestamp (WIRE.md §6.5)."""

    fact_id: uuid.UUID
    timestamp: datetime
    hlc: Hlc
    received_from: str
    origin_node_id: str
    origin_allowed_scopes: list[str]


@dataclass
class FactInput:
    entity: str
    relation: str
    value: TypedValue
    source: str
    confidence: float
    scope: str
    valid_until: str | None = None
    valid_until_at: datetime | None = None
    # The garden named by the body (its slug), resolved by facts.authorize into ``garden``.
    garden_slug: str | None = None
    garden: str = ""
    derived_from: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Set for a fact ingested from a peer (federation), None for one written here.
    remote: RemoteOrigin | None = None
    cid: str = ""

    def __post_init__(self) -> None:
        self.cid = compute_cid(
            entity=self.entity,
            relation=self.relation,
            value_type=self.value.value_type,
            value_v=self.value.value_v,
            source=self.source,
            confidence=self.confidence,
            scope=self.scope,
        )

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The current-value key: (entity, relation, scope, garden)."""
        return (self.entity, self.relation, self.scope, self.garden)


def parse_garden_uri(raw: str) -> str | None:
    """The slug of a garden URI ``stigmem://<authority>/garden/<slug>``, else None."""
    match = _GARDEN_URI.match(raw.strip())
    return match.group(1).lower() if match else None


def _uri_field(body: dict[str, Any], name: str, loc: Sequence[str | int], errors: list, warnings: list) -> str:
    raw = body.get(name)
    if not isinstance(raw, str) or not raw:
        errors.append(field_error([*loc, name], f"{name} must be a non-empty string", "string_type"))
        return ""
    if len(raw) > MAX_URI_LENGTH:
        errors.append(
            field_error([*loc, name], f"{name} is longer than {MAX_URI_LENGTH} characters", "string_too_long")
        )
        return ""
    problem = text_problem(raw)
    if problem is not None:
        errors.append(field_error([*loc, name], f"{name} {problem}", "string_unicode"))
        return ""
    try:
        normalized = normalize_uri(raw)
    except UriInvalid as exc:
        raise coded(400, f"invalid_{'entity' if name == 'entity' else 'source'}_uri", str(exc)) from None
    if normalized.informal:
        warnings.append(f"{name}: {INFORMAL_WARNING}")
    return normalized.uri


def parse_fact_body(body: Any, loc: Sequence[str | int] = ("body",)) -> FactInput:
    """Validate one assert body; raises ApiError (400/413/422) describing what is wrong."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(loc, "expected a JSON object", "dict_type")])
    errors: list[dict[str, Any]] = []
    warnings: list[str] = []

    entity = _uri_field(body, "entity", loc, errors, warnings)
    source = _uri_field(body, "source", loc, errors, warnings)

    relation = body.get("relation")
    if not isinstance(relation, str) or not relation.strip():
        errors.append(field_error([*loc, "relation"], "relation must be a non-empty string", "string_type"))
    elif len(relation) > MAX_RELATION_LENGTH:
        errors.append(
            field_error(
                [*loc, "relation"],
                f"relation is longer than {MAX_RELATION_LENGTH} characters",
                "string_too_long",
            )
        )
    elif (problem := text_problem(relation)) is not None:
        errors.append(field_error([*loc, "relation"], f"relation {problem}", "string_unicode"))

    value: TypedValue | None = None
    if "value" not in body:
        errors.append(field_error([*loc, "value"], "field required", "missing"))
    else:
        try:
            value = parse_value(body["value"], [*loc, "value"])
        except InputInvalid as exc:
            errors.extend(exc.detail)

    confidence = body.get("confidence", 1.0)
    if confidence is None:
        confidence = 1.0
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0.0 <= confidence <= 1.0  # before isfinite: a huge JSON integer overflows float()
        or not math.isfinite(confidence)
    ):
        errors.append(
            field_error([*loc, "confidence"], "confidence must be a number from 0.0 to 1.0", "confidence_range")
        )

    scope = body.get("scope", "local")
    if scope is None:
        scope = "local"
    if scope not in SCOPES:
        errors.append(field_error([*loc, "scope"], f"scope must be one of {', '.join(SCOPES)}", "literal_error"))

    valid_until = body.get("valid_until")
    valid_until_at = None
    if valid_until is not None:
        try:
            if not isinstance(valid_until, str):
                raise ValueError
            valid_until_at = parse_iso_datetime(valid_until)
            if valid_until_at.tzinfo is None:
                valid_until_at = valid_until_at.replace(tzinfo=UTC)
        except ValueError:
            errors.append(
                field_error([*loc, "valid_until"], "valid_until must be an ISO-8601 datetime", "datetime_parsing")
            )

    garden = None
    garden_raw = body.get("garden_id")
    if garden_raw is not None:
        garden = parse_garden_uri(garden_raw) if isinstance(garden_raw, str) else None
        if garden is None:
            errors.append(
                field_error(
                    [*loc, "garden_id"],
                    "garden_id must be a garden URI stigmem://<authority>/garden/<slug>",
                    "garden_uri",
                )
            )

    derived_from = _parse_derived_from(body.get("derived_from"), [*loc, "derived_from"], errors)

    if errors:
        raise InputInvalid(errors)
    assert value is not None
    return FactInput(
        entity=entity,
        relation=relation,
        value=value,
        source=source,
        confidence=float(confidence),
        scope=scope,
        valid_until=valid_until,
        valid_until_at=valid_until_at,
        garden_slug=garden,
        derived_from=derived_from,
        warnings=warnings,
    )


def _parse_derived_from(raw: Any, loc: list[str | int], errors: list) -> list[dict[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_DERIVED_FROM:
        errors.append(field_error(loc, f"derived_from must be a list of at most {MAX_DERIVED_FROM} items", "list_type"))
        return []
    parsed: list[dict[str, str]] = []
    for index, item in enumerate(raw):
        fact_id = item.get("fact_id") if isinstance(item, dict) else None
        if isinstance(fact_id, str) and fact_id and not text_problem(fact_id):
            parsed.append({"fact_id": item["fact_id"][:255]})
        elif isinstance(item, dict) and isinstance(item.get("hash"), str) and CID_PATTERN.match(item["hash"]):
            parsed.append({"hash": item["hash"]})
        else:
            errors.append(
                field_error(
                    [*loc, index],
                    'each item must be {"fact_id": "..."} or {"hash": "sha256:<64 hex>"}',
                    "derived_from_item",
                )
            )
    return parsed


def input_from_fact(fact) -> FactInput:
    """The input that reproduces a stored fact (same CID): re-asserting it makes it current."""
    return FactInput(
        entity=fact.entity,
        relation=fact.relation,
        value=TypedValue(fact.value_type, fact.value_v, fact.interpret_as),
        source=fact.source,
        confidence=fact.confidence,
        scope=fact.scope,
        valid_until=fact.valid_until,
        valid_until_at=fact.valid_until_at,
        garden=fact.garden,
        derived_from=list(fact.derived_from),
    )
