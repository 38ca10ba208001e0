"""The rules behind the TTP endpoints (WIRE.md §8.4): rule records, state changes, validating a rule
document against sample facts, listing tags and the ATT&CK Navigator layer of tags.

The views in ``ttprules.api`` only translate HTTP. Rules and their states are node-wide
(``ttprules.models``): every caller with ``read`` sees every rule, and state changes go through
``ttprules.store`` (history, audit row, event, revision). Tags belong to the tagged fact's tenant
and are visible to exactly those who can see that fact (``stigmem.queries.visible_facts``).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db.models import Count, Max, QuerySet
from yaml.nodes import MappingNode, ScalarNode

from stigmem.auth import Caller
from stigmem.errors import ApiError, InputInvalid, coded, field_error, not_found
from stigmem.fact_input import FactInput, parse_fact_body
from stigmem.gardens import garden_uri_for
from stigmem.models import Fact
from stigmem.normalize import normalize_query_uri
from stigmem.queries import decode_cursor, encode_cursor, parse_limit, visible_facts
from stigmem.values import parse_iso_datetime, text_problem
from ttprules import attack, engine, schema, store
from ttprules.compiler import CompiledRule, compile_rule
from ttprules.models import MAX_FILE_NAME_LENGTH, Rule, RuleState, RuleStateChange, RuleStats, Tag

HISTORY_LIMIT = 50
MAX_VALIDATE_BYTES = 64 * 1024
MAX_SAMPLE_FACTS = 100
DEFAULT_FILE_NAME = "rule.yaml"
BAD_FILE_NAME = "line 1: the file name must be <rule_id>.yaml or .yml; sync ignores this file"
TAGS_CURSOR = "ttp_tags"
NAVIGATOR_VERSION = "5.1.0"
LAYER_VERSION = "4.5"
GRADIENT_COLORS = ["#ffffff", "#ff6666"]


def rule_not_found() -> ApiError:
    return not_found("rule")


# --- rule records ----------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def state_summary(row: RuleState | None) -> dict[str, Any]:
    """A rule's state on the wire; ``enabled`` with nulls when no operator ever set one."""
    if row is None:
        return {
            "state": str(RuleState.State.ENABLED),
            "confidence_max": None,
            "expires_at": None,
            "set_by": None,
            "set_at": None,
            "reason": None,
        }
    return {key: value for key, value in store.state_record(row).items() if key != "rule_id"}


def stats_summary(row: RuleStats | None) -> dict[str, Any]:
    """The engine's counters of a rule; zeros before it first matched or failed."""
    if row is None:
        return {
            "matched": 0,
            "tags": 0,
            "shadow_tags": 0,
            "dropped": 0,
            "errors": 0,
            "last_matched_at": None,
            "last_error": None,
        }
    return {
        "matched": row.matched,
        "tags": row.tags,
        "shadow_tags": row.shadow_tags,
        "dropped": row.dropped,
        "errors": row.errors,
        "last_matched_at": _iso(row.last_matched_at),
        "last_error": row.last_error or None,
    }


def rule_record(rule: Rule, state: RuleState | None, stats: RuleStats | None) -> dict[str, Any]:
    """A stored rule: its definition, validity, state and counters. Every field read from the
    document (version, name, description, applies_to, emits, evidence_fields) is null when the
    document is invalid."""
    parsed = rule.parsed if rule.valid else None
    return {
        "rule_id": rule.rule_id,
        "rule_version": rule.rule_version if parsed is not None else None,
        "name": rule.name if parsed is not None else None,
        "description": parsed["description"] if parsed is not None else None,
        "file_name": rule.file_name,
        "valid": rule.valid,
        "errors": list(rule.errors),
        "warnings": list(rule.warnings),
        "applies_to": parsed["applies_to"] if parsed is not None else None,
        "emits": parsed["emits"] if parsed is not None else None,
        "evidence_fields": parsed["evidence_fields"] if parsed is not None else None,
        "content_sha256": rule.content_sha256,
        "loaded_at": rule.loaded_at.isoformat(),
        "updated_at": rule.updated_at.isoformat(),
        "state": state_summary(state),
        "stats": stats_summary(stats),
    }


def list_rules() -> list[dict[str, Any]]:
    """Every stored rule (valid or not) by rule id, in three queries."""
    states = {row.rule_id: row for row in RuleState.objects.all()}
    stats = {row.rule_id: row for row in RuleStats.objects.all()}
    return [
        rule_record(rule, states.get(rule.rule_id), stats.get(rule.rule_id))
        for rule in Rule.objects.defer("source", "parser_sha256").order_by("rule_id")
    ]


def get_rule(rule_id: str) -> Rule:
    """The stored rule; 404 ``rule not found`` for an unknown id (or one no rule file could have)."""
    if not schema.RULE_ID.fullmatch(rule_id) or len(rule_id) > schema.MAX_RULE_ID_LENGTH:
        raise rule_not_found()
    rule = Rule.objects.filter(rule_id=rule_id).first()
    if rule is None:
        raise rule_not_found()
    return rule


def record_of(rule: Rule) -> dict[str, Any]:
    state = RuleState.objects.filter(rule_id=rule.rule_id).first()
    stats = RuleStats.objects.filter(rule_id=rule.rule_id).first()
    return rule_record(rule, state, stats)


def history_record(change: RuleStateChange) -> dict[str, Any]:
    return {
        "from_state": str(change.from_state),
        "to_state": str(change.to_state),
        "confidence_max": change.confidence_max,
        "expires_at": _iso(change.expires_at),
        "set_by": change.set_by,
        "set_at": change.set_at.isoformat(),
        "reason": change.reason,
        "cause": str(change.cause),
    }


def rule_detail(rule_id: str) -> dict[str, Any]:
    """The record plus the YAML source and the last ``HISTORY_LIMIT`` state changes, newest first."""
    rule = get_rule(rule_id)
    changes = RuleStateChange.objects.filter(rule_id=rule.rule_id).order_by("-id")[:HISTORY_LIMIT]
    return {**record_of(rule), "source": rule.source, "history": [history_record(c) for c in changes]}


# --- states ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateChange:
    """A checked PUT body: the types are right; ``store.validate_state`` judges the values."""

    state: str
    confidence_max: float | int | None
    expires_at: datetime | None
    reason: str


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    return body


def _reason(raw: Any, loc: list[str], errors: list) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        errors.append(field_error(loc, "reason must be a string", "string_type"))
        return ""
    if (problem := text_problem(raw)) is not None:
        errors.append(field_error(loc, f"reason {problem}", "string_unicode"))
        return ""
    return raw


def parse_state_body(body: Any) -> StateChange:
    """``{"state", "confidence_max"?, "expires_at"? (ISO-8601; UTC when naive), "reason"?}``; 422
    naming every bad field. Unknown fields are ignored (WIRE.md §1)."""
    body = _object(body)
    errors: list[dict[str, Any]] = []
    state = body.get("state")
    if "state" not in body:
        errors.append(field_error(["body", "state"], "field required", "missing"))
    elif not isinstance(state, str):
        errors.append(field_error(["body", "state"], "state must be a string", "string_type"))
    confidence_max = body.get("confidence_max")
    if confidence_max is not None and (isinstance(confidence_max, bool) or not isinstance(confidence_max, int | float)):
        errors.append(field_error(["body", "confidence_max"], "confidence_max must be a number", "float_type"))
    expires_at = None
    raw_expiry = body.get("expires_at")
    if raw_expiry is not None:
        try:
            if not isinstance(raw_expiry, str):
                raise ValueError
            expires_at = parse_iso_datetime(raw_expiry)
            expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        except ValueError:
            errors.append(
                field_error(["body", "expires_at"], "expires_at must be an ISO-8601 datetime", "datetime_parsing")
            )
    reason = _reason(body.get("reason"), ["body", "reason"], errors)
    if errors:
        raise InputInvalid(errors)
    return StateChange(state, confidence_max, expires_at, reason)


def _state_invalid(exc: store.StateInvalid, where: str) -> InputInvalid:
    return InputInvalid([field_error([where, name], message, "value_error") for name, message in exc.errors.items()])


def set_rule_state(caller: Caller, rule_id: str, body: Any) -> dict[str, Any]:
    """Set a stored rule's state for the whole node; returns the rule's record."""
    change = parse_state_body(body)
    get_rule(rule_id)  # a state kept for a rule whose file is gone is not the API's to change
    try:
        store.set_state(
            rule_id,
            change.state,
            confidence_max=change.confidence_max,
            expires_at=change.expires_at,
            reason=change.reason,
            set_by=caller.entity_uri,
        )
    except store.StateInvalid as exc:
        raise _state_invalid(exc, "body") from None
    except store.RuleNotFound:
        raise rule_not_found() from None
    return record_of(get_rule(rule_id))


def clear_rule_state(caller: Caller, rule_id: str, params) -> dict[str, Any]:
    """Back to enabled (``?reason=`` optional); returns the rule's record."""
    errors: list = []
    reason = _reason(params.get("reason"), ["query", "reason"], errors)
    if errors:
        raise InputInvalid(errors)
    get_rule(rule_id)
    try:
        store.clear_state(rule_id, reason=reason, set_by=caller.entity_uri)
    except store.StateInvalid as exc:
        raise _state_invalid(exc, "query") from None
    except store.RuleNotFound:
        raise rule_not_found() from None
    return record_of(get_rule(rule_id))


# --- validating a rule document ----------------------------------------------------------------------


@dataclass(frozen=True)
class ValidateRequest:
    text: str
    filename: str | None
    facts: list[FactInput]


def parse_validate_body(body: Any) -> ValidateRequest:
    """``{"yaml", "filename"?, "facts"?}``: the YAML at most 64 KiB, at most 100 sample facts, each
    read as ``POST /v1/facts`` reads an assert body (other fields of a fact are ignored, so fact
    records can be pasted). 422 naming every bad field."""
    body = _object(body)
    errors: list[dict[str, Any]] = []
    text = body.get("yaml")
    if "yaml" not in body:
        errors.append(field_error(["body", "yaml"], "field required", "missing"))
    elif not isinstance(text, str):
        errors.append(field_error(["body", "yaml"], "yaml must be a string", "string_type"))
    elif (problem := text_problem(text)) is not None:
        errors.append(field_error(["body", "yaml"], f"yaml {problem}", "string_unicode"))
    elif len(text) > MAX_VALIDATE_BYTES or len(text.encode("utf-8")) > MAX_VALIDATE_BYTES:
        errors.append(
            field_error(["body", "yaml"], f"yaml must be at most {MAX_VALIDATE_BYTES // 1024} KiB", "string_too_long")
        )
    filename = body.get("filename")
    if filename is not None:
        if not isinstance(filename, str):
            errors.append(field_error(["body", "filename"], "filename must be a string", "string_type"))
        elif (problem := text_problem(filename)) is not None:
            errors.append(field_error(["body", "filename"], f"filename {problem}", "string_unicode"))
        elif len(filename) > MAX_FILE_NAME_LENGTH:
            errors.append(
                field_error(
                    ["body", "filename"],
                    f"filename must be at most {MAX_FILE_NAME_LENGTH} characters",
                    "string_too_long",
                )
            )
    raw_facts = body.get("facts")
    facts: list[FactInput] = []
    if raw_facts is not None:
        if not isinstance(raw_facts, list):
            errors.append(field_error(["body", "facts"], "facts must be a list of fact objects", "list_type"))
        elif len(raw_facts) > MAX_SAMPLE_FACTS:
            errors.append(
                field_error(["body", "facts"], f"facts must hold at most {MAX_SAMPLE_FACTS} facts", "too_long")
            )
        else:
            for index, raw in enumerate(raw_facts):
                try:
                    facts.append(parse_fact_body(raw, ["body", "facts", index]))
                except InputInvalid as exc:
                    errors.extend(exc.detail)
    if errors:
        raise InputInvalid(errors)
    return ValidateRequest(text, filename, facts)


def document_rule_id(text: str) -> str | None:
    """The ``rule_id`` a rule document declares, if it is a usable file stem; None otherwise."""
    root, problem = schema.compose(text)  # the validator's own composer: no aliases, bounded depth
    if problem is not None or not isinstance(root, MappingNode):
        return None
    for key, value in root.value:
        if isinstance(key, ScalarNode) and key.value == "rule_id" and isinstance(value, ScalarNode):
            candidate = value.value
            if schema.RULE_ID.fullmatch(candidate) and len(candidate) <= schema.MAX_RULE_ID_LENGTH:
                return candidate
            return None
    return None


def sample_view(fact: FactInput) -> tuple[dict[str, Any], bool]:
    """What a rule would see of a sample fact once stored, and whether the engine evaluates it at all
    (retractions and rule-sourced facts never are): the engine's own functions, on an unsaved fact."""
    garden_uri = garden_uri_for(fact.garden_slug) if fact.garden_slug else None
    row = Fact(
        entity=fact.entity,
        relation=fact.relation,
        source=fact.source,
        scope=fact.scope,
        confidence=fact.confidence,
        value_type=fact.value.value_type,
        value_v=fact.value.value_v,
        garden=garden_uri or "",
    )
    return engine.fact_view(row, {garden_uri: garden_uri} if garden_uri else None), engine.is_evaluated(row)


def evaluate_sample(rule: CompiledRule, index: int, fact: FactInput) -> dict[str, Any]:
    """One sample fact against the rule as written (its stored state, if any, does not apply)."""
    view, evaluated = sample_view(fact)
    applies = evaluated and rule.applies(fact.relation)
    matched = applies and rule.matches(view)
    tags = []
    if matched:
        tags = [
            {
                "tactic": emit.tactic,
                "technique_id": emit.technique_id,
                "sub_technique_id": emit.sub_technique_id,
                "confidence": emit.confidence,
            }
            for emit in rule.emits
            if emit.confidence >= engine.MIN_TAG_CONFIDENCE
        ]
    return {
        "index": index,
        "applies": applies,
        "matched": matched,
        "tags": tags,
        "evidence": rule.evidence(view) if matched else None,
    }


def validate_document(body: Any) -> dict[str, Any]:
    """Validate a rule document and run it over the sample facts; nothing is stored."""
    request = parse_validate_body(body)
    filename = request.filename
    if filename is None:
        rule_id = document_rule_id(request.text)
        filename = f"{rule_id}.yaml" if rule_id else DEFAULT_FILE_NAME
    parsed = schema.parse_rule(request.text, filename)
    errors = [str(error) for error in parsed.errors]
    if not store.RULE_FILE_NAME.match(filename):
        errors.insert(0, BAD_FILE_NAME)
    results = None
    if not errors and parsed.rule is not None:
        rule = compile_rule(parsed.rule)
        results = [evaluate_sample(rule, index, fact) for index, fact in enumerate(request.facts)]
    return {
        "valid": results is not None,
        "errors": errors,
        "warnings": [str(warning) for warning in parsed.warnings],
        "results": results,
    }


# --- tags ------------------------------------------------------------------------------------------


def _query_text(params, name: str, errors: list) -> str | None:
    raw = params.get(name)
    if not raw:
        return None
    if "\x00" in raw:  # PostgreSQL cannot even compare a string holding NUL
        errors.append(field_error(["query", name], f"{name} must not contain NUL characters", "string_unicode"))
        return None
    return raw


def visible_tags(caller: Caller, entity: str | None = None) -> QuerySet[Tag]:
    """The caller's tenant's tags whose tagged fact the caller can see (optionally of one entity)."""
    rows = Tag.objects.filter(tenant=caller.tenant, fact__in=visible_facts(caller).values("id"))
    if entity is not None:
        rows = rows.filter(entity=normalize_query_uri(entity))
    return rows


@dataclass(frozen=True)
class TagQuery:
    entity: str | None
    technique: str | None
    rule_id: str | None
    cursor: str | None
    limit: int


def parse_tag_query(params) -> TagQuery:
    errors: list = []
    entity = _query_text(params, "entity", errors)
    technique = _query_text(params, "technique", errors)
    rule_id = _query_text(params, "rule_id", errors)
    limit = parse_limit(params, errors)
    if errors:
        raise InputInvalid(errors)
    return TagQuery(entity, technique, rule_id, params.get("cursor") or None, limit)


@dataclass(frozen=True)
class TagPage:
    tags: list[Tag]
    cursor: str | None
    has_more: bool


def list_tags(caller: Caller, query: TagQuery) -> TagPage:
    """Newest first (created_at, then id), paged by a signed keyset cursor.

    A technique id with a dot filters the sub-technique; without, the technique, so ``T1059`` also
    finds the tags of its sub-techniques.
    """
    rows = visible_tags(caller, query.entity)
    if query.technique is not None:
        if "." in query.technique:
            rows = rows.filter(sub_technique_id=query.technique)
        else:
            rows = rows.filter(technique_id=query.technique)
    if query.rule_id is not None:
        rows = rows.filter(rule_id=query.rule_id)
    if query.cursor:
        position = decode_cursor(TAGS_CURSOR, query.cursor)
        try:
            at = datetime.fromisoformat(position["t"])
            last_id = uuid.UUID(position["i"])
        except (KeyError, TypeError, ValueError):
            raise coded(400, "cursor_invalid", "cursor is malformed or was not issued by this node") from None
        rows = rows.filter(created_at__lte=at).exclude(created_at=at, id__gte=last_id)
    page = list(rows.order_by("-created_at", "-id")[: query.limit + 1])
    has_more = len(page) > query.limit
    page = page[: query.limit]
    cursor = None
    if has_more:
        last = page[-1]
        cursor = encode_cursor(TAGS_CURSOR, {"t": last.created_at.isoformat(), "i": str(last.id)})
    return TagPage(page, cursor, has_more)


# --- the ATT&CK Navigator layer ----------------------------------------------------------------------


def parse_navigator_query(params) -> str | None:
    errors: list = []
    entity = _query_text(params, "entity", errors)
    if errors:
        raise InputInvalid(errors)
    return entity


@dataclass
class _Cell:
    """One technique (or sub-technique) under one tactic: what its tags add up to."""

    score: int = 0
    max_confidence: float = 0.0
    rules: set[str] = field(default_factory=set)


def navigator_layer(caller: Caller, entity: str | None) -> dict[str, Any]:
    """An ATT&CK Navigator layer (format 4.5) of the caller's visible tags: one technique entry per
    (technique or sub-technique, tactic), scored by its number of tags.

    Counted by the database: one row per (technique, sub-technique, tactic, rule), never per tag.
    """
    catalogue = attack.catalogue()
    grouped = (
        visible_tags(caller, entity)
        .values("technique_id", "sub_technique_id", "tactic", "rule_id")
        .annotate(tags=Count("id"), max_confidence=Max("confidence"))
        .order_by()
    )
    cells: dict[tuple[str, str], _Cell] = defaultdict(_Cell)
    for row in grouped:
        cell = cells[(row["sub_technique_id"] or row["technique_id"], row["tactic"])]
        cell.score += row["tags"]
        cell.max_confidence = max(cell.max_confidence, row["max_confidence"])
        cell.rules.add(row["rule_id"])
    techniques = []
    for (technique_id, tactic_id), cell in sorted(cells.items()):
        rules = ", ".join(sorted(cell.rules))
        confidence = f"{cell.max_confidence:g}"
        entry: dict[str, Any] = {"techniqueID": technique_id}
        tactic = catalogue.tactic(tactic_id)
        if tactic is not None:  # a tactic the catalogue no longer knows: shown under all the technique's tactics
            entry["tactic"] = tactic.shortname
        entry |= {
            "score": cell.score,
            "comment": f"{cell.score} tag{'s' if cell.score != 1 else ''} by {rules}; highest confidence {confidence}",
            "enabled": True,
            "metadata": [{"name": "rules", "value": rules}, {"name": "max_confidence", "value": confidence}],
            "showSubtechniques": False,
        }
        techniques.append(entry)
    highest = max((entry["score"] for entry in techniques), default=0)
    subject = f" of {normalize_query_uri(entity)}" if entity is not None else ""
    return {
        "name": f"stigmem TTP tags{subject}",
        "versions": {"attack": catalogue.version.split(".")[0], "navigator": NAVIGATOR_VERSION, "layer": LAYER_VERSION},
        "domain": "enterprise-attack",
        "description": (
            f"ATT&CK techniques the node's TTP rules tagged in the facts{subject} visible to the requesting key; "
            f"score: number of tags. ATT&CK {catalogue.version}."
        ),
        "sorting": 0,
        "layout": {
            "layout": "side",
            "aggregateFunction": "average",
            "showID": True,
            "showName": True,
            "showAggregateScores": False,
            "countUnscored": False,
            "expandedSubtechniques": "annotated",
        },
        "hideDisabled": False,
        "techniques": techniques,
        # The Navigator needs maxValue > minValue, also for a layer without tags.
        "gradient": {"colors": GRADIENT_COLORS, "minValue": 0, "maxValue": max(highest, 1)},
        "legendItems": [],
        "metadata": [],
        "links": [],
        "showTacticRowBackground": False,
        "tacticRowBackground": "#dddddd",
        "selectTechniquesAcrossTactics": True,
        "selectSubtechniquesWithParent": False,
    }
