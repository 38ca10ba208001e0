"""The TTP engine (WIRE.md §8.3, DESIGN.md §3): evaluates facts against the rule index, writes tags.

It tails the fact log as the ``ttp`` consumer. A batch is evaluated before the consumer's
transaction (``evaluate_batch``: pure computation, no lock held) and written inside it
(``write_tags``), so the tags, their facts, their events, the per-rule counters and the cursor
commit together: a crash repeats nothing and loses nothing.

- **Dispatch**: a fact meets only the rules whose ``applies_to`` names its relation (exactly or by a
  trailing-``*`` prefix); the index memoizes the rules per relation, so rules for other relations
  cost nothing.
- **States** (WIRE.md §8.2): ``disabled`` rules are not in the index; ``clipped`` rules fire with
  confidence at most ``confidence_max``; ``shadow`` rules are evaluated and counted, and write nothing.
- **Tags** below ``MIN_TAG_CONFIDENCE`` (after clipping) are dropped and counted. A tag's id is a
  uuid5 over (fact id, rule id, rule version, technique, sub-technique): evaluating a fact again (a
  backfill, a replayed batch) finds its tags present and writes nor announces anything.
- **Loops**: facts whose source is a rule's (``stigmem://<authority>/rule/<id>``, of any node) are
  never evaluated, nor are retractions (confidence 0: the observation is withdrawn).
- **Failures**: a rule that raises on a fact is logged and counted; the other rules still see the
  fact and the cursor moves on. A failure to write (the database) rolls the batch back, to be
  retried from the cursor.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import F
from django.utils import timezone

from stigmem import events, metrics
from stigmem.clock import clock_transaction
from stigmem.fact_input import FactInput
from stigmem.facts import Origin, assert_facts
from stigmem.models import Fact
from stigmem.node import node_authority
from stigmem.normalize import normalize_uri
from stigmem.records import garden_uris_of
from stigmem.values import TypedValue
from ttprules import attack, store
from ttprules.compiler import CompiledRule, LiteralScreen, compile_text, value_screen_text
from ttprules.models import Rule, RuleState, RuleStats, Tag
from ttprules.schema import Emit

logger = logging.getLogger(__name__)

CONSUMER = "ttp"
BATCH_SIZE = 500
MIN_TAG_CONFIDENCE = 0.3
TAG_RELATION = "ttp:technique"
AUDIT_ACTOR = "ttprules"
# The uuid5 namespace of tag ids; fixed forever, or re-evaluation would mint new ids.
TAG_NAMESPACE = uuid.UUID("6f1d7a56-3c1e-5b0a-9d8e-2f4b7c9e1a30")
RULE_SOURCE = re.compile(r"^stigmem://[^/]+/rule/", re.IGNORECASE)
# What the consumer reads of every fact in the log: enough to tell whether a rule will look at it.
# The rest (a value can be 64 KiB) is loaded only for the facts some rule applies to.
LOG_COLUMNS = ("id", "seq", "tenant", "relation", "source", "confidence")
# The columns evaluation and tag writing read.
FACT_COLUMNS = (*LOG_COLUMNS, "entity", "value_type", "value_v", "scope", "garden")
_RELATION_MEMO_LIMIT = 4096
# From this length on, a fact's value is searched for all its rules' screen literals in one pass.
_LONG_TEXT = 2048


# --- the rule index ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveRule:
    """A valid rule that is not disabled, with its state."""

    rule: CompiledRule
    state: str
    confidence_max: float | None

    @property
    def shadow(self) -> bool:
        return self.state == RuleState.State.SHADOW

    def confidence(self, emit: Emit) -> float:
        if self.confidence_max is not None:
            return min(emit.confidence, self.confidence_max)
        return emit.confidence


class RuleIndex:
    """The active rules, found by relation."""

    def __init__(self, rules: Iterable[ActiveRule], attack_version: str) -> None:
        self.rules: tuple[ActiveRule, ...] = tuple(sorted(rules, key=lambda r: r.rule.rule_id))
        self.attack_version = attack_version
        self._exact: dict[str, list[ActiveRule]] = defaultdict(list)
        self._prefixed: list[tuple[str, ActiveRule]] = []
        for active in self.rules:
            for pattern in active.rule.applies_to:
                if pattern.endswith("*"):
                    self._prefixed.append((pattern[:-1], active))
                else:
                    self._exact[pattern].append(active)
        self._memo: dict[str, tuple[ActiveRule, ...]] = {}
        self._screened: dict[str, tuple[tuple[ActiveRule, tuple[str, ...] | None], ...]] = {}
        self._literal_screens: dict[str, LiteralScreen] = {}

    def rules_for(self, relation: str) -> tuple[ActiveRule, ...]:
        found = self._memo.get(relation)
        if found is None:
            matching = {id(a): a for a in self._exact.get(relation, ())}
            matching.update((id(a), a) for prefix, a in self._prefixed if relation.startswith(prefix))
            found = tuple(sorted(matching.values(), key=lambda a: a.rule.rule_id))
            if len(self._memo) >= _RELATION_MEMO_LIMIT:  # relations are free-form: keep the memo bounded
                self._memo.clear()
            self._memo[relation] = found
        return found

    def screened_for(self, relation: str) -> tuple[tuple[ActiveRule, tuple[str, ...] | None], ...]:
        """``rules_for``, each with its rule's screen (``CompiledRule.screen``)."""
        found = self._screened.get(relation)
        if found is None:
            found = tuple((active, active.rule.screen) for active in self.rules_for(relation))
            if len(self._screened) >= _RELATION_MEMO_LIMIT:
                self._screened.clear()
            self._screened[relation] = found
        return found

    def literals_in(self, relation: str, screen_text: str) -> frozenset[str] | str:
        """What to look the screens of ``relation``'s rules up in: the set of their literals that
        ``screen_text`` contains (found in one pass), or, when that is not known, the text itself."""
        screen = self._literal_screens.get(relation)
        if screen is None:
            screen = LiteralScreen(lit for _, found in self.screened_for(relation) if found for lit in found)
            if len(self._literal_screens) >= _RELATION_MEMO_LIMIT:
                self._literal_screens.clear()
            self._literal_screens[relation] = screen
        present = screen.present(screen_text)
        return screen_text if present is None else present

    def __len__(self) -> int:
        return len(self.rules)


# Compiled rules by (rule id, content hash, validator hash): a state change rebuilds the index
# without compiling every rule again.
_compiled: dict[tuple[str, str, str], CompiledRule] = {}


def build_index() -> RuleIndex:
    """The index of the stored rules: valid ones, minus disabled ones."""
    states = {row.rule_id: row for row in RuleState.objects.all()}
    active: list[ActiveRule] = []
    keys = set()
    for row in Rule.objects.filter(valid=True):
        state = states.get(row.rule_id)
        if state is not None and state.state == RuleState.State.DISABLED:
            continue
        key = (row.rule_id, row.content_sha256, row.parser_sha256)
        keys.add(key)
        compiled = _compiled.get(key)
        if compiled is None:
            try:
                compiled = _compiled[key] = compile_text(row.source, row.file_name)
            except Exception:  # stored as valid by another version of the validator: skip, never stop
                logger.exception("TTP rule %s no longer compiles; it is skipped until the next sync", row.rule_id)
                continue
        active.append(
            ActiveRule(
                compiled,
                state.state if state is not None else RuleState.State.ENABLED,
                state.confidence_max if state is not None else None,
            )
        )
    for stale in set(_compiled) - keys:
        del _compiled[stale]
    return RuleIndex(active, attack.catalogue().version)


_index = store.RuleIndexCache(build_index)


def current_index() -> RuleIndex:
    """This process's index, rebuilt when the rule revision has moved (one query when it has not)."""
    return _index.get()


def clear_cache() -> None:
    _index.clear()
    _compiled.clear()


# --- evaluation ----------------------------------------------------------------------------------


def fact_view(fact: Fact, garden_uris: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields rules see (WIRE.md §8.1), from a stored fact; ``garden_id`` is the garden URI."""
    garden_uri = (garden_uris or {}).get(fact.garden) if fact.garden else None
    return {
        "entity": fact.entity,
        "relation": fact.relation,
        "source": fact.source,
        "scope": fact.scope,
        "confidence": fact.confidence,
        "value": {"type": fact.value_type, "v": None if fact.value_type == "null" else fact.value_v},
        "garden_id": garden_uri,
    }


def is_evaluated(fact: Fact) -> bool:
    """Rule-sourced facts and retractions are never evaluated."""
    return fact.confidence > 0 and not RULE_SOURCE.match(fact.source)


@dataclass(frozen=True)
class Finding:
    """A tag a rule would write for a fact (not yet checked against the stored tags)."""

    fact: Fact
    rule: ActiveRule
    emit: Emit
    confidence: float
    evidence: dict[str, Any]

    @property
    def tag_id(self) -> uuid.UUID:
        return tag_id(self.fact.id, self.rule.rule, self.emit)


def tag_id(fact_id: uuid.UUID, rule: CompiledRule, emit: Emit) -> uuid.UUID:
    name = f"{fact_id}|{rule.rule_id}|{rule.rule_version}|{emit.technique_id}|{emit.sub_technique_id or ''}"
    return uuid.uuid5(TAG_NAMESPACE, name)


@dataclass
class Tally:
    """Per-rule counts of one batch (RuleStats' columns), plus what the batch cost."""

    matched: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tags: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    shadow_tags: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_error: dict[str, str] = field(default_factory=dict)
    evaluated: int = 0

    def rule_ids(self) -> set[str]:
        return set(self.matched) | set(self.errors) | set(self.dropped)


def evaluate_fact(index: RuleIndex, fact: Fact, view: Mapping[str, Any], tally: Tally) -> list[Finding]:
    """Every tag the index's rules find in one fact (shadow rules' included, flagged by their rule)."""
    findings: list[Finding] = []
    # Most rules need a word in the value that this fact lacks: CompiledRule.may_match, inlined. For a
    # long value the words are looked up in the set of those it contains (the same answer as ``in``).
    haystack: str | frozenset[str] | None = value_screen_text(view)
    if haystack is not None and len(haystack) >= _LONG_TEXT:
        haystack = index.literals_in(fact.relation, haystack)
    for active, screen in index.screened_for(fact.relation):
        if screen is not None:
            if haystack is None:
                continue
            for literal in screen:
                if literal in haystack:
                    break
            else:
                continue
        rule = active.rule
        try:
            if not rule.matches(view):
                continue
            evidence = rule.evidence(view)
        except Exception as error:  # one broken rule must not stop the others or the cursor
            logger.exception("TTP rule %s failed on fact %s", rule.rule_id, fact.id)
            tally.errors[rule.rule_id] += 1
            tally.last_error[rule.rule_id] = f"{type(error).__name__}: {error}"[:1000]
            continue
        tally.matched[rule.rule_id] += 1
        for emit in rule.emits:
            confidence = active.confidence(emit)
            if confidence < MIN_TAG_CONFIDENCE:
                tally.dropped[rule.rule_id] += 1
            elif active.shadow:
                tally.shadow_tags[rule.rule_id] += 1
            else:
                findings.append(Finding(fact, active, emit, confidence, evidence))
    return findings


@dataclass
class EvaluatedBatch:
    """What ``evaluate_batch`` found, for ``write_tags``; ``rows`` is the batch as read (the cursor's)."""

    rows: Sequence[Fact]
    findings: list[Finding]
    tally: Tally
    attack_version: str


def evaluate_batch(rows: Sequence[Fact], index: RuleIndex | None = None) -> EvaluatedBatch:
    index = index or current_index()
    tally = Tally()
    findings: list[Finding] = []
    started = time.perf_counter()
    candidates = _loaded([f for f in rows if is_evaluated(f) and index.rules_for(f.relation)])
    uris = garden_uris_of(candidates) if any(f.garden for f in candidates) else {}
    for fact in candidates:
        findings.extend(evaluate_fact(index, fact, fact_view(fact, uris), tally))
    tally.evaluated = len(candidates)
    metrics.TTP_FACTS_EVALUATED.inc(len(candidates))
    metrics.TTP_EVALUATION_SECONDS.inc(time.perf_counter() - started)
    return EvaluatedBatch(rows, findings, tally, index.attack_version)


def _loaded(facts: list[Fact]) -> list[Fact]:
    """The facts with every column of FACT_COLUMNS, in one query if the log's rows lack some."""
    if not facts or not any(f.get_deferred_fields() for f in facts):
        return facts
    full = Fact.objects.only(*FACT_COLUMNS).in_bulk([f.id for f in facts])
    return [full[f.id] for f in facts]


# --- writing -------------------------------------------------------------------------------------


def rule_source(rule_id: str) -> str:
    """The source of a rule's tag facts (normalized as any source is, so queries find it)."""
    return normalize_uri(f"stigmem://{node_authority()}/rule/{rule_id}").uri


def write_tags(batch: EvaluatedBatch) -> list[Tag]:
    """Write the batch's new tags, their facts and events, and the counters; returns the new tags.

    Runs in the caller's transaction (the consumer's, or a backfill's). The node clock is held
    while checking which tags exist and writing the rest, so two writers of the same tags (the
    consumer and a backfill) cannot both find a tag new.
    """
    created: list[Tag] = []
    if batch.findings:
        with clock_transaction() as clock:
            ids = {f.tag_id for f in batch.findings}
            existing = set(Tag.objects.filter(id__in=ids).values_list("id", flat=True))
            fresh: dict[uuid.UUID, Finding] = {}
            for finding in batch.findings:
                if finding.tag_id not in existing:
                    fresh.setdefault(finding.tag_id, finding)
            by_tenant: dict[str, list[tuple[uuid.UUID, Finding]]] = defaultdict(list)
            for item in fresh.items():
                by_tenant[item[1].fact.tenant].append(item)
            now = timezone.now()
            for tenant, items in by_tenant.items():
                # An entity shows many techniques: a tag fact never disputes another one.
                outcomes = assert_facts(
                    tenant,
                    [_tag_fact_input(f) for _, f in items],
                    origin=Origin.RULE,
                    record_conflicts=False,
                    actor=AUDIT_ACTOR,
                )
                tags = [
                    _tag(tid, finding, outcome.fact, batch.attack_version, now)
                    for (tid, finding), outcome in zip(items, outcomes, strict=True)
                ]
                Tag.objects.bulk_create(tags)
                for tag in tags:
                    record = tag_record(tag)
                    events.emit(clock, tenant, events.TTP_TAGGED, record)
                    events.emit(clock, tenant, events.ttp_rule_fired(tag.technique_id), record)
                    batch.tally.tags[tag.rule_id] += 1
                created.extend(tags)
    _count(batch.tally)
    metrics.TTP_TAGS_WRITTEN.inc(len(created))
    return created


def _tag_fact_input(finding: Finding) -> FactInput:
    fact = finding.fact
    return FactInput(
        entity=fact.entity,
        relation=TAG_RELATION,
        value=TypedValue("string", finding.emit.sub_technique_id or finding.emit.technique_id, "content"),
        source=rule_source(finding.rule.rule.rule_id),
        confidence=finding.confidence,
        scope=fact.scope,
        # A fact in a garden stays there: its tag says something about the garden's content.
        garden=fact.garden,
        derived_from=[{"fact_id": str(fact.id)}],
    )


def _tag(tid: uuid.UUID, finding: Finding, tag_fact: Fact, attack_version: str, now: datetime) -> Tag:
    return Tag(
        id=tid,
        tenant=finding.fact.tenant,
        fact_id=finding.fact.id,
        entity=finding.fact.entity,
        rule_id=finding.rule.rule.rule_id,
        rule_version=finding.rule.rule.rule_version,
        tactic=finding.emit.tactic,
        technique_id=finding.emit.technique_id,
        sub_technique_id=finding.emit.sub_technique_id,
        confidence=finding.confidence,
        evidence=finding.evidence,
        attack_version=attack_version,
        tag_fact=tag_fact,
        created_at=now,
    )


def tag_record(tag: Tag) -> dict[str, Any]:
    """A tag on the wire (WIRE.md §8.3): API responses and event payloads."""
    return {
        "id": str(tag.id),
        "fact_id": str(tag.fact_id),
        "entity": tag.entity,
        "rule_id": tag.rule_id,
        "rule_version": tag.rule_version,
        "tactic": tag.tactic,
        "technique_id": tag.technique_id,
        "sub_technique_id": tag.sub_technique_id,
        "confidence": tag.confidence,
        "evidence": tag.evidence,
        "attack_version": tag.attack_version,
        "created_at": tag.created_at.isoformat(),
    }


def _count(tally: Tally) -> None:
    """Add the batch's counts to RuleStats (rows created on first use)."""
    rule_ids = tally.rule_ids()
    if not rule_ids:
        return
    RuleStats.objects.bulk_create([RuleStats(rule_id=r) for r in sorted(rule_ids)], ignore_conflicts=True)
    now = timezone.now()
    for rule_id in sorted(rule_ids):
        changes: dict[str, Any] = {
            name: F(name) + getattr(tally, name)[rule_id]
            for name in ("matched", "tags", "shadow_tags", "dropped", "errors")
            if getattr(tally, name).get(rule_id)
        }
        if tally.matched.get(rule_id):
            changes["last_matched_at"] = now
        if rule_id in tally.last_error:
            changes["last_error"] = tally.last_error[rule_id]
            changes["last_error_at"] = now
        RuleStats.objects.filter(rule_id=rule_id).update(**changes)
    errors = sum(tally.errors.values())
    if errors:
        metrics.TTP_RULE_ERRORS.inc(errors)


def handle_batch(batch: EvaluatedBatch) -> None:
    """The ``ttp`` consumer's handler (runs in the transaction that moves its cursor)."""
    write_tags(batch)
