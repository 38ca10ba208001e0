"""The shipped TTP rule pack (ttprules/rules/*.yaml) measured against its labelled corpus.

Every rule has a corpus file tests/ttprules/corpus/<rule_id>.yaml with ``positives`` (facts the rule
must tag) and ``negatives`` (facts it must leave alone, near-misses included). A rule is also scored
against the positives of every other rule that emits none of its techniques: a scanner user-agent
rule must not fire on a SQL-injection URL, a discovery rule must not fire on a reverse shell. Rules
that share a technique (two T1059 rules, two T1190 rules) are not scored on each other's examples,
since one observation legitimately carries both tags.

On failure the tests print a table (rule, tp, fp, fn, precision, recall) and the offending examples.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ttprules.compiler import CompiledRule, RuleInvalid, compile_text

RULES_DIR = Path(__file__).resolve().parents[2] / "ttprules" / "rules"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"

MIN_RULES = 25
MIN_POSITIVES = 6
MIN_NEGATIVES = 8
PACK_MIN_PRECISION = 0.95
RULE_MIN_PRECISION = 0.9

# What a corpus example leaves out; an example may override any of these.
FACT_DEFAULTS: dict[str, Any] = {
    "entity": "stigmem://test/host/web-1",
    "source": "stigmem://test/agent/sensor",
    "scope": "team",
    "confidence": 0.9,
    "garden_id": None,
}
EXAMPLE_KEYS = {"relation", "value", *FACT_DEFAULTS}

RULE_FILES = sorted(RULES_DIR.glob("*.yaml"))
CORPUS_FILES = sorted(CORPUS_DIR.glob("*.yaml"))
RULE_STEMS = [p.stem for p in RULE_FILES]


# -- loading ------------------------------------------------------------------------------------


@functools.cache
def _compiled() -> tuple[dict[str, CompiledRule], dict[str, list[str]]]:
    """Every rule file compiled: (rules by file stem, error lines by file name)."""
    rules: dict[str, CompiledRule] = {}
    errors: dict[str, list[str]] = {}
    for path in RULE_FILES:
        try:
            rules[path.stem] = compile_text(path.read_text(encoding="utf-8"), path.name)
        except RuleInvalid as exc:
            errors[path.name] = [str(e) for e in exc.errors]
    return rules, errors


def _rules() -> dict[str, CompiledRule]:
    return _compiled()[0]


@functools.cache
def _corpus() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Corpus by file stem: {"positives": [fact, ...], "negatives": [fact, ...]}."""
    corpus = {}
    for path in CORPUS_FILES:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        corpus[path.stem] = {
            label: [_fact(example) for example in raw.get(label) or []] for label in ("positives", "negatives")
        }
    return corpus


def _fact(example: Any) -> dict[str, Any]:
    return {**FACT_DEFAULTS, **example} if isinstance(example, Mapping) else {"invalid": example}


def _fires(rule: CompiledRule, fact: Mapping[str, Any]) -> bool:
    return rule.applies(fact.get("relation")) and rule.matches(fact)


def _techniques(rule: CompiledRule) -> frozenset[str]:
    return frozenset(emit.technique_id for emit in rule.emits)


def _show(fact: Mapping[str, Any]) -> str:
    value = fact.get("value") or {}
    return f"{fact.get('relation')} {value.get('type')}:{value.get('v')!r}"


# -- scoring ------------------------------------------------------------------------------------


@dataclass
class Score:
    rule_id: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    missed: list[str] = field(default_factory=list)  # positives not tagged
    wrong: list[str] = field(default_factory=list)  # negatives tagged, with where they came from

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def _score(rule_id: str) -> Score:
    rules, corpus = _rules(), _corpus()
    rule = rules[rule_id]
    own = corpus.get(rule_id, {"positives": [], "negatives": []})
    score = Score(rule_id)
    for fact in own["positives"]:
        if _fires(rule, fact):
            score.tp += 1
        else:
            score.fn += 1
            score.missed.append(_show(fact))
    negatives = [("own negative", fact) for fact in own["negatives"]]
    for other_id, other in sorted(rules.items()):
        if other_id == rule_id or _techniques(other) & _techniques(rule):
            continue
        negatives += [(f"{other_id} positive", fact) for fact in corpus.get(other_id, {}).get("positives", [])]
    for origin, fact in negatives:
        if _fires(rule, fact):
            score.fp += 1
            score.wrong.append(f"{origin}: {_show(fact)}")
        else:
            score.tn += 1
    return score


@functools.cache
def _scores() -> tuple[Score, ...]:
    return tuple(_score(rule_id) for rule_id in sorted(_rules()))


def _table(scores: tuple[Score, ...] | list[Score], details: bool = True) -> str:
    lines = [f"{'rule':<8} {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>5} {'precision':>9} {'recall':>7}"]
    for s in scores:
        lines.append(f"{s.rule_id:<8} {s.tp:>4} {s.fp:>4} {s.fn:>4} {s.tn:>5} {s.precision:>9.3f} {s.recall:>7.3f}")
    if details:
        for s in scores:
            lines += [f"  {s.rule_id} missed   {m}" for m in s.missed]
            lines += [f"  {s.rule_id} tagged   {w}" for w in s.wrong]
    return "\n".join(lines)


# -- the pack loads -----------------------------------------------------------------------------


def test_every_rule_file_compiles():
    rules, errors = _compiled()
    shown = "\n".join(f"{name}: {line}" for name, lines in sorted(errors.items()) for line in lines)
    assert not errors, f"invalid rule files:\n{shown}"
    assert len(rules) >= MIN_RULES, f"only {len(rules)} valid rules in {RULES_DIR}"


@pytest.mark.parametrize("stem", RULE_STEMS)
def test_rule_file_stem_is_its_rule_id(stem):
    rule = _rules().get(stem)
    assert rule is not None, f"{stem}.yaml does not compile (see test_every_rule_file_compiles)"
    assert rule.rule_id == stem


@pytest.mark.parametrize("stem", RULE_STEMS)
def test_emitted_tactics_belong_to_their_techniques(stem):
    rule = _rules().get(stem)
    assert rule is not None, f"{stem}.yaml does not compile"
    from ttprules.attack import catalogue  # the bundled ATT&CK catalogue the compiler validates against

    attack = catalogue()
    for emit in rule.emits:
        technique = attack.technique(emit.sub_technique_id or emit.technique_id)
        assert technique is not None, emit
        assert not (technique.revoked or technique.deprecated), f"{stem}: {technique.id} is revoked or deprecated"
        assert emit.tactic in technique.tactics, f"{stem}: {emit.tactic} is not a tactic of {technique.id}"
        assert 0.5 <= emit.confidence <= 0.95, f"{stem}: confidence {emit.confidence} outside the pack's 0.5-0.95"


def test_rules_and_corpus_files_pair_up():
    rules = set(RULE_STEMS)
    corpus = {p.stem for p in CORPUS_FILES}
    assert not corpus - rules, f"corpus files without a rule: {sorted(corpus - rules)}"
    assert not rules - corpus, f"rules without a corpus file: {sorted(rules - corpus)}"


@pytest.mark.parametrize("stem", [p.stem for p in CORPUS_FILES])
def test_corpus_file_shape(stem):
    raw = yaml.safe_load((CORPUS_DIR / f"{stem}.yaml").read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and set(raw) == {"positives", "negatives"}, f"{stem}: keys {sorted(raw or {})}"
    assert len(raw["positives"]) >= MIN_POSITIVES, f"{stem}: {len(raw['positives'])} positives"
    assert len(raw["negatives"]) >= MIN_NEGATIVES, f"{stem}: {len(raw['negatives'])} negatives"
    for example in raw["positives"] + raw["negatives"]:
        assert isinstance(example, dict) and not set(example) - EXAMPLE_KEYS, f"{stem}: bad example {example!r}"
        assert isinstance(example.get("relation"), str), f"{stem}: no relation in {example!r}"
        value = example.get("value")
        assert isinstance(value, dict) and set(value) == {"type", "v"}, f"{stem}: bad value in {example!r}"
    texts = [(e["relation"], e["value"]["v"]) for e in raw["positives"] + raw["negatives"]]
    duplicates = sorted({t for t in texts if texts.count(t) > 1}, key=str)
    assert not duplicates, f"{stem}: duplicate examples {duplicates}"


# -- precision and recall -----------------------------------------------------------------------


@pytest.mark.parametrize("stem", RULE_STEMS)
def test_rule_recall_and_precision(stem):
    if stem not in _rules():
        pytest.fail(f"{stem}.yaml does not compile")
    score = next(s for s in _scores() if s.rule_id == stem)
    assert score.recall == 1.0 and score.precision >= RULE_MIN_PRECISION, (
        f"{stem}: recall {score.recall:.3f} (must be 1.0), precision {score.precision:.3f} "
        f"(must be >= {RULE_MIN_PRECISION})\n{_table([score])}"
    )


def test_pack_precision():
    scores = _scores()
    tp = sum(s.tp for s in scores)
    fp = sum(s.fp for s in scores)
    precision = tp / (tp + fp) if tp + fp else 1.0
    offenders = [s for s in scores if s.fp or s.fn]
    assert precision >= PACK_MIN_PRECISION, (
        f"pack precision {precision:.3f} (tp={tp} fp={fp}) below {PACK_MIN_PRECISION}\n"
        f"{_table(scores, details=False)}\n{_table(offenders)}"
    )
