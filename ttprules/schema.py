"""Strict validation of one TTP rule file (WIRE.md §8.1), with errors that name the offending line.

The YAML is composed into a node tree (``yaml.compose``-style) rather than loaded into plain data, so
every key and value keeps its position: a rule author gets ``line 12: unknown field 'value.text'``
instead of a bare message. All problems in a file are collected, not just the first.

The operator tree is kept as plain data in ``ParsedRule.match``: a combinator is ``{"all": [...]}``,
``{"any": [...]}`` or ``{"not": node}``; a leaf is ``{"field": F, <operator>: operand}``.
``ttprules.compiler`` turns it into closures.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import re2
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ttprules.attack import Catalogue, Technique, catalogue

MAX_RULE_BYTES = 256 * 1024
# Deep enough for any sensible rule; bounds the validator's and the compiler's recursion.
MAX_MATCH_DEPTH = 32
MAX_RULE_ID_LENGTH = 64
MAX_NAME_LENGTH = 200
# rule_version is stored in a 32-bit integer column.
MAX_RULE_VERSION = 2**31 - 1

RULE_ID = re.compile(r"[A-Za-z0-9_]+")

FIELDS = ("entity", "relation", "source", "scope", "confidence", "value.type", "value.v", "garden_id")
# confidence is a number; value.v holds any JSON scalar; every other field is text.
NUMERIC_FIELDS = ("confidence", "value.v")
TEXT_OPERATORS = ("regex", "contains", "icontains", "startswith", "endswith", "cidr")
COMPARISONS = ("gt", "gte", "lt", "lte")
OPERATORS = (*TEXT_OPERATORS, "equals", "in", "exists", *COMPARISONS)
COMBINATORS = ("all", "any", "not")

TOP_KEYS = ("rule_id", "rule_version", "name", "description", "applies_to", "match", "emits", "evidence_fields")
REQUIRED_KEYS = ("rule_id", "rule_version", "name", "applies_to", "match", "emits")
EMIT_KEYS = ("tactic", "technique_id", "sub_technique_id", "confidence")
REQUIRED_EMIT_KEYS = ("tactic", "technique_id", "confidence")


@dataclass(frozen=True)
class RuleError:
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Emit:
    tactic: str
    technique_id: str
    sub_technique_id: str | None
    confidence: float


@dataclass(frozen=True)
class ParsedRule:
    rule_id: str
    rule_version: int
    name: str
    description: str  # "" when the file has none
    applies_to: tuple[str, ...]
    match: dict[str, Any]
    emits: tuple[Emit, ...]
    evidence_fields: tuple[str, ...]


@dataclass
class RuleParse:
    rule: ParsedRule | None  # None whenever errors is non-empty
    errors: list[RuleError] = field(default_factory=list)
    warnings: list[RuleError] = field(default_factory=list)


def regex_options() -> re2.Options:
    options = re2.Options()
    # Rules only ask "does it match": without capture groups RE2 can answer from its DFA alone.
    options.never_capture = True
    # An invalid pattern is reported to the rule author; RE2 must not also log it to stderr.
    options.log_errors = False
    return options


def compile_regex(pattern: str) -> Any:
    """RE2-compile a rule's pattern (linear-time matching); raises ``re2.error``."""
    return re2.compile(pattern, regex_options())


def parse_rule(text: str, filename: str) -> RuleParse:
    """Validate one rule file's text; ``filename`` supplies the stem that rule_id must equal."""
    # len(text) is a lower bound on the UTF-8 size: a huge text is refused without encoding it.
    if len(text) > MAX_RULE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RULE_BYTES:
        return RuleParse(None, [RuleError(1, f"rule file exceeds {MAX_RULE_BYTES // 1024} KiB")])
    root, problem = compose(text)
    if problem is not None:
        return RuleParse(None, [problem])
    if root is None:
        return RuleParse(None, [RuleError(1, "rule file is empty")])
    validator = _Validator(catalogue())
    rule = validator.rule(root, PurePosixPath(filename).stem)
    errors = sorted(validator.errors, key=lambda e: e.line)
    return RuleParse(None if errors else rule, errors, sorted(validator.warnings, key=lambda e: e.line))


class _RuleLoader(yaml.SafeLoader):
    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # An alias makes one node appear many times: nested aliases expand exponentially
        # ("billion laughs"), and a rule never needs them.
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in rule files", mark)
        return super().compose_node(parent, index)


def compose(text: str) -> tuple[Node | None, RuleError | None]:
    """The document's YAML node tree by the validator's loader (no aliases, bounded depth), or the error."""
    try:
        loader = _RuleLoader(text)
    except yaml.reader.ReaderError as exc:  # raised while the reader scans for unprintable characters
        return None, _reader_error(text, exc)
    try:
        return loader.get_single_node(), None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = f"{exc.context}: " if exc.context else ""
        return None, RuleError(mark.line + 1 if mark else 1, f"invalid YAML: {context}{exc.problem}")
    except RecursionError:
        # PyYAML composes nested collections recursively.
        return None, RuleError(1, "invalid YAML: nested too deeply")
    finally:
        loader.dispose()


def _reader_error(text: str, exc: yaml.reader.ReaderError) -> RuleError:
    line = text.count("\n", 0, exc.position) + 1
    return RuleError(line, f"invalid YAML: {str(exc).splitlines()[0]}")


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a single value"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _got(node: Node, value: Any, *, string_expected: bool = False) -> str:
    """', got X' for a type error; where a string was expected, points out YAML's implicit typing of
    unquoted scalars (no, 1.0, 0010, 2024-01-01)."""
    got = f", got {_type_name(value)}"
    if string_expected and isinstance(node, ScalarNode) and node.style is None and node.value:
        got += f" (YAML reads the unquoted {node.value} as {_type_name(value)}; quote it for a string)"
    return got


_NULL_TAG = "tag:yaml.org,2002:null"
_BAD = object()  # a value that failed validation; its error is already recorded

_Entries = dict[str, tuple[Node, Node]]


class _Validator:
    def __init__(self, attack: Catalogue) -> None:
        self.attack = attack
        self.errors: list[RuleError] = []
        self.warnings: list[RuleError] = []
        # A scalar is constructed (typed) on its own by a fresh SafeLoader's constructor.
        self._constructor = yaml.SafeLoader("")

    def error(self, node: Node, message: str) -> None:
        self.errors.append(RuleError(_line(node), message))

    def warn(self, node: Node, message: str) -> None:
        self.warnings.append(RuleError(_line(node), message))

    # -- generic shapes --------------------------------------------------------------------------

    def scalar(self, node: Node, what: str) -> Any:
        if not isinstance(node, ScalarNode):
            self.error(node, f"{what} must be a single value, not {_kind(node)}")
            return _BAD
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
            self.error(node, f"{what}: cannot read {node.value!r}: {problem}")
            return _BAD

    def string(self, node: Node, what: str) -> Any:
        value = self.scalar(node, what)
        if value is _BAD:
            return _BAD
        if not isinstance(value, str) or not value:
            got = _got(node, value, string_expected=True) if value != "" else ""
            self.error(node, f"{what} must be a non-empty string{got}")
            return _BAD
        return value

    def number(self, node: Node, what: str) -> Any:
        value = self.scalar(node, what)
        if value is _BAD:
            return _BAD
        if not _is_number(value):
            self.error(node, f"{what} must be a finite number{_got(node, value)}")
            return _BAD
        return value

    def mapping(self, node: Node, allowed: tuple[str, ...], where: str) -> _Entries:
        """The known keys of a mapping node; unknown, duplicate and non-scalar keys are errors."""
        entries: _Entries = {}
        assert isinstance(node, MappingNode)
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, f"keys in {where} must be plain names, not {_kind(key_node)}")
                continue
            key = key_node.value
            if key not in allowed:
                self.error(key_node, f"unknown key '{key}' in {where} (allowed: {', '.join(allowed)})")
            elif key in entries:
                self.error(key_node, f"duplicate key '{key}' in {where}")
            else:
                entries[key] = (key_node, value_node)
        return entries

    def sequence(self, node: Node, what: str, *, allow_empty: bool = False) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what} must be a list, not {_kind(node)}")
            return None
        if not node.value and not allow_empty:
            self.error(node, f"{what} must not be empty")
            return None
        return node.value

    # -- the rule --------------------------------------------------------------------------------

    def rule(self, root: Node, stem: str) -> ParsedRule | None:
        if not isinstance(root, MappingNode):
            self.error(root, f"a rule file must be a mapping (rule_id: ..., match: ...), not {_kind(root)}")
            return None
        entries = self.mapping(root, TOP_KEYS, "rule")
        for key in REQUIRED_KEYS:
            if key not in entries:
                self.error(root, f"missing required key '{key}'")

        def value(key: str, check: Any) -> Any:
            return check(entries[key][1]) if key in entries else _BAD

        rule_id = value("rule_id", lambda n: self.rule_id(n, stem))
        rule_version = value("rule_version", self.rule_version)
        name = value("name", self.name)
        description = value("description", self.description) if "description" in entries else ""
        applies_to = value("applies_to", self.applies_to)
        match = value("match", lambda n: self.match_node(n, depth=1))
        emits = value("emits", self.emits)
        evidence = value("evidence_fields", self.evidence_fields) if "evidence_fields" in entries else ()
        if self.errors:
            return None
        return ParsedRule(rule_id, rule_version, name, description, applies_to, match, emits, evidence)

    def rule_id(self, node: Node, stem: str) -> Any:
        rule_id = self.string(node, "rule_id")
        if rule_id is _BAD:
            return _BAD
        if not RULE_ID.fullmatch(rule_id):
            self.error(node, f"rule_id '{rule_id}' may contain only letters, digits and underscores")
        elif len(rule_id) > MAX_RULE_ID_LENGTH:
            self.error(node, f"rule_id is longer than {MAX_RULE_ID_LENGTH} characters")
        elif rule_id != stem:
            self.error(node, f"rule_id '{rule_id}' must equal the file name stem '{stem}'")
        return rule_id

    def rule_version(self, node: Node) -> Any:
        version = self.scalar(node, "rule_version")
        if version is _BAD:
            return _BAD
        expected = f"rule_version must be an integer from 1 to {MAX_RULE_VERSION}"
        if not isinstance(version, int) or isinstance(version, bool):
            self.error(node, f"{expected}{_got(node, version)}")
            return _BAD
        if not 1 <= version <= MAX_RULE_VERSION:
            self.error(node, f"{expected}, got {version}")
            return _BAD
        return version

    def name(self, node: Node) -> Any:
        name = self.string(node, "name")
        if name is not _BAD and len(name) > MAX_NAME_LENGTH:
            self.error(node, f"name is longer than {MAX_NAME_LENGTH} characters")
        return name

    def description(self, node: Node) -> Any:
        description = self.scalar(node, "description")
        if description is not _BAD and not isinstance(description, str):
            self.error(node, f"description must be a string{_got(node, description, string_expected=True)}")
            return _BAD
        return description

    def applies_to(self, node: Node) -> Any:
        items = self.sequence(node, "applies_to")
        if items is None:
            return _BAD
        patterns = []
        for item in items:
            pattern = self.string(item, "an applies_to entry")
            if pattern is _BAD:
                continue
            if "*" in pattern[:-1]:
                self.error(item, f"applies_to '{pattern}': '*' is allowed only at the end (a prefix match)")
                continue
            patterns.append(pattern)
        return tuple(patterns)

    def evidence_fields(self, node: Node) -> Any:
        items = self.sequence(node, "evidence_fields", allow_empty=True)
        if items is None:
            return _BAD
        fields: list[str] = []
        for item in items:
            name = self.scalar(item, "an evidence_fields entry")
            if name is _BAD:
                continue
            if name not in FIELDS:
                self.error(item, f"unknown field '{name}' in evidence_fields (fields: {', '.join(FIELDS)})")
            elif name in fields:
                self.error(item, f"duplicate field '{name}' in evidence_fields")
            else:
                fields.append(name)
        return tuple(fields)

    # -- match -----------------------------------------------------------------------------------

    def match_node(self, node: Node, depth: int) -> Any:
        if depth > MAX_MATCH_DEPTH:
            self.error(node, f"match tree is nested deeper than {MAX_MATCH_DEPTH} levels")
            return _BAD
        if not isinstance(node, MappingNode):
            self.error(
                node,
                "a match node must be a mapping: {all: [...]}, {any: [...]}, {not: {...}} "
                f"or {{field: F, <operator>: V}}, not {_kind(node)}",
            )
            return _BAD
        entries = self.mapping(node, (*COMBINATORS, "field", *OPERATORS), "match node")
        combinators = [k for k in entries if k in COMBINATORS]
        leaf_keys = [k for k in entries if k not in COMBINATORS]
        if combinators and leaf_keys:
            self.error(node, "a match node is either a combinator (all, any, not) or a leaf (field and one operator)")
            return _BAD
        if len(combinators) > 1:
            second = entries[combinators[1]][0]
            self.error(second, f"a match node holds one combinator, found {' and '.join(combinators)}: nest them")
            return _BAD
        if combinators:
            return self.combinator(combinators[0], entries[combinators[0]][1], depth)
        if not entries:
            if not node.value:
                self.error(node, "empty match node")
            return _BAD
        return self.leaf(node, entries)

    def combinator(self, name: str, node: Node, depth: int) -> Any:
        if name == "not":
            if isinstance(node, SequenceNode):
                self.error(node, "'not' takes one match node, not a list: wrap several in all or any")
                return _BAD
            child = self.match_node(node, depth + 1)
            return _BAD if child is _BAD else {"not": child}
        items = self.sequence(node, f"'{name}'")
        if items is None:
            return _BAD
        children = [self.match_node(item, depth + 1) for item in items]
        return _BAD if any(c is _BAD for c in children) else {name: children}

    def leaf(self, node: Node, entries: _Entries) -> Any:
        field_name: Any = _BAD
        if "field" not in entries:
            self.error(node, f"match leaf has no 'field' (one of: {', '.join(FIELDS)})")
        else:
            field_node = entries["field"][1]
            field_name = self.scalar(field_node, "field")
            if field_name is not _BAD and field_name not in FIELDS:
                self.error(field_node, f"unknown field '{field_name}' (fields: {', '.join(FIELDS)})")
                field_name = _BAD
        operators = [k for k in entries if k in OPERATORS]
        if not operators:
            # A misspelt operator is already reported as an unknown key: don't say it twice.
            if len(entries) == len(node.value):
                self.error(node, f"match leaf has no operator (one of: {', '.join(OPERATORS)})")
            return _BAD
        if len(operators) > 1:
            self.error(
                entries[operators[1]][0],
                f"match leaf has {len(operators)} operators ({', '.join(operators)}); "
                "a leaf takes exactly one: combine leaves with all or any",
            )
            return _BAD
        if field_name is _BAD:
            return _BAD
        operator = operators[0]
        key_node, value_node = entries[operator]
        operand = self.operand(field_name, operator, key_node, value_node)
        return _BAD if operand is _BAD else {"field": field_name, operator: operand}

    def operand(self, field_name: str, operator: str, key_node: Node, node: Node) -> Any:
        if operator in COMPARISONS and field_name not in NUMERIC_FIELDS:
            self.error(key_node, f"operator '{operator}' compares numbers: it applies to confidence and value.v only")
            return _BAD
        if field_name == "confidence" and operator in TEXT_OPERATORS:
            self.error(key_node, f"operator '{operator}' does not apply to confidence, a number")
            return _BAD
        what = f"'{operator}' on {field_name}"
        if operator == "exists":
            value = self.scalar(node, what)
            if value is not _BAD and not isinstance(value, bool):
                self.error(node, f"{what} must be true or false{_got(node, value)}")
                return _BAD
            return value
        if operator in COMPARISONS:
            return self.number(node, what)
        if operator == "regex":
            return self.regex(node, what)
        if operator == "cidr":
            return self.cidr(node, what)
        if operator == "equals":
            return self.literal(field_name, node, what)
        if operator == "in":
            items = self.sequence(node, what)
            if items is None:
                return _BAD
            values = [self.literal(field_name, item, f"an entry of {what}") for item in items]
            return _BAD if any(v is _BAD for v in values) else values
        return self.string(node, what)  # contains, icontains, startswith, endswith

    def literal(self, field_name: str, node: Node, what: str) -> Any:
        """An equals/in operand: numbers for confidence, strings for text fields, any scalar for value.v."""
        value = self.scalar(node, what)
        if value is _BAD:
            return _BAD
        if field_name == "confidence":
            ok, expected = _is_number(value), "a finite number"
        elif field_name == "value.v":
            ok, expected = isinstance(value, str | bool) or _is_number(value), "a string, number or boolean"
        else:
            ok, expected = isinstance(value, str), "a string"
        if not ok:
            got = _got(node, value, string_expected=field_name != "confidence")
            self.error(node, f"{what} must be {expected}{got}")
            return _BAD
        if isinstance(value, bool) and node.style is None and node.value.lower() not in ("true", "false"):
            # YAML 1.1 reads yes/no/on/off as booleans: valid on value.v, but rarely what was meant.
            self.warn(node, f"{what}: YAML reads the unquoted {node.value} as {str(value).lower()}; quote it for text")
        return value

    def regex(self, node: Node, what: str) -> Any:
        pattern = self.string(node, what)
        if pattern is _BAD:
            return _BAD
        try:
            compile_regex(pattern)
        except re2.error as exc:
            detail = exc.args[0] if exc.args else "?"
            detail = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
            self.error(node, f"invalid regex (RE2 syntax): {detail}")
            return _BAD
        return pattern

    def cidr(self, node: Node, what: str) -> Any:
        if isinstance(node, SequenceNode):
            items = self.sequence(node, what)
            if items is None:
                return _BAD
            networks = [self.network(item, what) for item in items]
            return _BAD if any(n is _BAD for n in networks) else networks
        return self.network(node, what)

    def network(self, node: Node, what: str) -> Any:
        text = self.string(node, what)
        if text is _BAD:
            return _BAD
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            self.error(node, f"{what}: invalid network: {exc}")
            return _BAD
        return text

    # -- emits -----------------------------------------------------------------------------------

    def emits(self, node: Node) -> Any:
        items = self.sequence(node, "emits")
        if items is None:
            return _BAD
        emits: list[Emit] = []
        for item in items:
            emit = self.emit(item)
            if emit is _BAD:
                continue
            if any((e.technique_id, e.sub_technique_id) == (emit.technique_id, emit.sub_technique_id) for e in emits):
                # Tag ids derive from (fact, rule, version, technique, sub-technique): a repeat would collide.
                shown = emit.sub_technique_id or emit.technique_id
                self.error(item, f"duplicate emits entry for {shown}")
                continue
            emits.append(emit)
        return tuple(emits)

    def emit(self, node: Node) -> Any:
        if not isinstance(node, MappingNode):
            self.error(node, f"an emits entry must be a mapping (tactic, technique_id, ...), not {_kind(node)}")
            return _BAD
        entries = self.mapping(node, EMIT_KEYS, "emits entry")
        missing = [k for k in REQUIRED_EMIT_KEYS if k not in entries]
        for key in missing:
            self.error(node, f"emits entry is missing '{key}'")
        if missing:
            return _BAD
        tactic_node, technique_node = entries["tactic"][1], entries["technique_id"][1]
        tactic_id = self.string(tactic_node, "tactic")
        technique = self.technique(technique_node)
        sub = self.sub_technique(entries["sub_technique_id"][1], technique) if "sub_technique_id" in entries else None
        confidence_node = entries["confidence"][1]
        confidence = self.number(confidence_node, "emits confidence")
        if confidence is not _BAD and not 0 < confidence <= 1:
            self.error(confidence_node, f"emits confidence must be greater than 0 and at most 1, got {confidence}")
            confidence = _BAD
        if tactic_id is not _BAD:
            tactic_id = self.tactic(tactic_node, tactic_id, [t for t in (technique, sub) if isinstance(t, Technique)])
        if _BAD in (tactic_id, technique, sub, confidence):
            return _BAD
        return Emit(tactic_id, technique.id, sub.id if sub else None, float(confidence))

    def tactic(self, node: Node, tactic_id: str, techniques: list[Technique]) -> Any:
        tactic = self.attack.tactic(tactic_id)
        if tactic is None:
            self.error(node, f"unknown tactic '{tactic_id}' (not in ATT&CK {self.attack.version} Enterprise)")
            return _BAD
        for technique in techniques:
            if tactic_id not in technique.tactics:
                belongs = ", ".join(f"{t} ({self._tactic_name(t)})" for t in sorted(technique.tactics))
                self.error(
                    node,
                    f"tactic {tactic_id} ({tactic.name}) is not a tactic of {technique.id} ({technique.name}), "
                    f"which belongs to {belongs}",
                )
                return _BAD
        return tactic_id

    def _tactic_name(self, tactic_id: str) -> str:
        tactic = self.attack.tactic(tactic_id)
        return tactic.name if tactic else "?"

    def technique(self, node: Node) -> Any:
        technique = self.attack_technique(node, "technique_id")
        if technique is _BAD:
            return _BAD
        if technique.is_subtechnique:
            self.error(
                node,
                f"technique_id '{technique.id}' is a sub-technique: "
                f"write technique_id: {technique.parent} and sub_technique_id: {technique.id}",
            )
            return _BAD
        return technique

    def sub_technique(self, node: Node, technique: Any) -> Any:
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
            return None  # an explicit null means "no sub-technique"
        sub = self.attack_technique(node, "sub_technique_id")
        if sub is _BAD:
            return _BAD
        if not sub.is_subtechnique:
            self.error(node, f"sub_technique_id '{sub.id}' ({sub.name}) is a technique, not a sub-technique")
            return _BAD
        if isinstance(technique, Technique) and sub.parent != technique.id:
            self.error(
                node,
                f"sub_technique_id '{sub.id}' ({sub.name}) is a sub-technique of {sub.parent}, "
                f"not of technique_id {technique.id}",
            )
            return _BAD
        return sub

    def attack_technique(self, node: Node, what: str) -> Any:
        tid = self.string(node, what)
        if tid is _BAD:
            return _BAD
        technique = self.attack.technique(tid)
        if technique is None:
            self.error(node, f"unknown {what} '{tid}' (not in ATT&CK {self.attack.version} Enterprise)")
            return _BAD
        # Revoked and deprecated ids stay valid so that existing rules keep loading; the author is told.
        if technique.revoked:
            replaced = f"; use {technique.revoked_by}" if technique.revoked_by else ""
            self.warn(node, f"{tid} ({technique.name}) is revoked in ATT&CK {self.attack.version}{replaced}")
        elif technique.deprecated:
            self.warn(node, f"{tid} ({technique.name}) is deprecated in ATT&CK {self.attack.version}")
        return technique
