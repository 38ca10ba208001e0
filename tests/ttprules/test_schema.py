"""Rule file validation (WIRE.md §8.1): every error class, with its message and its line."""

from __future__ import annotations

import textwrap

import pytest

from ttprules.schema import MAX_MATCH_DEPTH, MAX_RULE_BYTES, Emit, ParsedRule, RuleError, parse_rule

# Line numbers matter below: rule_id is line 1, ..., evidence_fields line 16.
VALID = """\
rule_id: R0010
rule_version: 3
name: unix_reverse_shell
description: Reverse-shell one-liners in observed commands
applies_to: ["observed:command", "observed:shell*"]
match:
  all:
    - field: value.v
      regex: '(?i)bash\\s+-i|/dev/tcp/'
    - not: {field: source, startswith: "stigmem://"}
emits:
  - tactic: TA0002
    technique_id: T1059
    sub_technique_id: T1059.004
    confidence: 0.9
evidence_fields: [entity, value.v, source]
"""


def replace_lines(replacements: dict[int, str], text: str = VALID) -> str:
    """VALID with the given 1-based lines replaced (an empty string drops the line's content)."""
    lines = text.splitlines()
    for number, new in replacements.items():
        lines[number - 1] = new
    return "\n".join(lines) + "\n"


def with_match(block: str) -> str:
    """VALID with its match tree replaced: the block's first line is line 7."""
    head, rest = VALID.split("match:\n")
    tail = "emits:\n" + rest.split("emits:\n")[1]
    return head + "match:\n" + textwrap.indent(textwrap.dedent(block), "  ") + tail


def with_emits(block: str) -> str:
    """VALID with its emits replaced: the block's first line is line 12."""
    head = VALID.split("emits:\n")[0]
    return head + "emits:\n" + textwrap.indent(textwrap.dedent(block), "  ")


def errors(text: str, filename: str = "R0010.yaml") -> list[str]:
    result = parse_rule(text, filename)
    assert result.rule is None if result.errors else result.rule is not None
    return [str(e) for e in result.errors]


def warnings(text: str, filename: str = "R0010.yaml") -> list[str]:
    return [str(w) for w in parse_rule(text, filename).warnings]


# -- a valid rule ---------------------------------------------------------------------------------


def test_valid_rule_parses_into_plain_data():
    result = parse_rule(VALID, "rules/ttp/R0010.yaml")
    assert result.errors == []
    assert result.warnings == []
    assert result.rule == ParsedRule(
        rule_id="R0010",
        rule_version=3,
        name="unix_reverse_shell",
        description="Reverse-shell one-liners in observed commands",
        applies_to=("observed:command", "observed:shell*"),
        match={
            "all": [
                {"field": "value.v", "regex": "(?i)bash\\s+-i|/dev/tcp/"},
                {"not": {"field": "source", "startswith": "stigmem://"}},
            ]
        },
        emits=(Emit("TA0002", "T1059", "T1059.004", 0.9),),
        evidence_fields=("entity", "value.v", "source"),
    )


def test_optional_keys_default():
    text = replace_lines({4: "", 14: "", 16: ""})
    rule = parse_rule(text, "R0010.yaml").rule
    assert rule is not None
    assert rule.description == ""
    assert rule.evidence_fields == ()
    assert rule.emits == (Emit("TA0002", "T1059", None, 0.9),)


def test_explicit_null_sub_technique_is_none():
    rule = parse_rule(replace_lines({14: "    sub_technique_id: null"}), "R0010.yaml").rule
    assert rule is not None and rule.emits[0].sub_technique_id is None


def test_rule_error_str():
    assert str(RuleError(7, "boom")) == "line 7: boom"


# -- top level ------------------------------------------------------------------------------------


def test_unknown_top_level_key_is_named_with_its_line():
    assert errors(replace_lines({4: "descripton: typo"})) == [
        "line 4: unknown key 'descripton' in rule (allowed: rule_id, rule_version, name, description, "
        "applies_to, match, emits, evidence_fields)"
    ]


def test_duplicate_key():
    assert errors(VALID + "name: again\n") == ["line 17: duplicate key 'name' in rule"]


@pytest.mark.parametrize(
    ("key", "lines"),
    [
        ("rule_id", [1]),
        ("rule_version", [2]),
        ("name", [3]),
        ("applies_to", [5]),
        ("match", [6, 7, 8, 9, 10]),
        ("emits", [11, 12, 13, 14, 15]),
    ],
)
def test_missing_required_key(key, lines):
    # Reported at the rule mapping's first line (line 2 once line 1 is blank).
    text = replace_lines(dict.fromkeys(lines, ""))
    first = 2 if lines == [1] else 1
    assert errors(text) == [f"line {first}: missing required key '{key}'"]


def test_rule_id_must_equal_file_stem():
    assert errors(VALID, "rules/ttp/R0011.yaml") == ["line 1: rule_id 'R0010' must equal the file name stem 'R0011'"]


@pytest.mark.parametrize("rule_id", ["R-10", "R 10", "R10\\n", "r.10"])
def test_bad_rule_id(rule_id):
    text = replace_lines({1: f'rule_id: "{rule_id}"'})
    assert errors(text, "R-10.yaml") == [
        f"line 1: rule_id '{rule_id.replace(chr(92) + 'n', chr(10))}' may contain only letters, digits and underscores"
    ]


def test_rule_id_read_as_a_number_gets_a_quoting_hint():
    assert errors(replace_lines({1: "rule_id: 10"}), "10.yaml") == [
        "line 1: rule_id must be a non-empty string, got a number (YAML reads the unquoted 10 as a number; "
        "quote it for a string)"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "got 0"),
        ("-2", "got -2"),
        ("2147483648", "got 2147483648"),
        ("true", "got a boolean"),
        ("1.5", "got a number"),
        ('"3"', "got a string"),
    ],
)
def test_bad_rule_version(value, message):
    assert errors(replace_lines({2: f"rule_version: {value}"})) == [
        f"line 2: rule_version must be an integer from 1 to 2147483647, {message}"
    ]


def test_name_must_be_a_non_empty_string():
    assert errors(replace_lines({3: 'name: ""'})) == ["line 3: name must be a non-empty string"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("applies_to: []", "line 5: applies_to must not be empty"),
        ('applies_to: "observed:command"', "line 5: applies_to must be a list, not a single value"),
        (
            'applies_to: ["observed:*:x"]',
            "line 5: applies_to 'observed:*:x': '*' is allowed only at the end (a prefix match)",
        ),
    ],
)
def test_bad_applies_to(line, message):
    assert errors(replace_lines({5: line})) == [message]


def test_unknown_evidence_field():
    assert errors(replace_lines({16: "evidence_fields: [entity, value.text]"})) == [
        "line 16: unknown field 'value.text' in evidence_fields (fields: entity, relation, source, scope, "
        "confidence, value.type, value.v, garden_id)"
    ]


# -- match ----------------------------------------------------------------------------------------


def test_unknown_key_in_match_leaf_is_named():
    text = with_match(
        """\
        all:
          - field: value.v
            regexp: bash
        """
    )
    assert errors(text) == [
        "line 9: unknown key 'regexp' in match node (allowed: all, any, not, field, regex, contains, icontains, "
        "startswith, endswith, cidr, equals, in, exists, gt, gte, lt, lte)"
    ]


def test_unknown_key_beside_a_combinator_is_named():
    text = with_match(
        """\
        any:
          - {field: entity, exists: true}
        when: always
        """
    )
    assert errors(text)[0].startswith("line 9: unknown key 'when' in match node")


def test_unknown_field_is_named():
    text = with_match(
        """\
        all:
          - field: value.text
            contains: bash
        """
    )
    assert errors(text) == [
        "line 8: unknown field 'value.text' (fields: entity, relation, source, scope, confidence, value.type, "
        "value.v, garden_id)"
    ]


def test_leaf_without_operator():
    text = with_match("{field: entity}\n")
    assert errors(text) == [
        "line 7: match leaf has no operator (one of: regex, contains, icontains, startswith, endswith, cidr, "
        "equals, in, exists, gt, gte, lt, lte)"
    ]


def test_leaf_without_field():
    assert errors(with_match("{contains: bash}\n"))[0].startswith("line 7: match leaf has no 'field'")


def test_two_operators_in_one_leaf_point_at_the_second():
    text = with_match(
        """\
        field: value.v
        contains: bash
        regex: nc
        """
    )
    assert errors(text) == [
        "line 9: match leaf has 2 operators (contains, regex); a leaf takes exactly one: combine leaves with all or any"
    ]


def test_invalid_regex_reports_re2s_message():
    # Look-behind is valid for Python's re but not for RE2: the rule is refused, not run on a slower engine.
    text = with_match(
        """\
        field: value.v
        regex: '(?<=a)b'
        """
    )
    assert errors(text) == ["line 8: invalid regex (RE2 syntax): invalid perl operator: (?<="]


def test_unbalanced_regex():
    text = with_match("{field: value.v, regex: '(a'}\n")
    assert errors(text) == ["line 7: invalid regex (RE2 syntax): missing ): (a"]


@pytest.mark.parametrize(
    ("leaf", "message"),
    [
        ("{field: entity, contains: 5}", "'contains' on entity must be a non-empty string, got a number"),
        ("{field: entity, startswith: ''}", "'startswith' on entity must be a non-empty string"),
        ("{field: entity, exists: maybe}", "'exists' on entity must be true or false, got a string"),
        ("{field: entity, gt: 3}", "operator 'gt' compares numbers: it applies to confidence and value.v only"),
        ("{field: confidence, gte: high}", "'gte' on confidence must be a finite number, got a string"),
        ("{field: value.v, lt: .inf}", "'lt' on value.v must be a finite number, got a number"),
        ("{field: confidence, regex: '0\\.9'}", "operator 'regex' does not apply to confidence, a number"),
        ("{field: confidence, equals: '0.9'}", "'equals' on confidence must be a finite number, got a string"),
        ("{field: entity, equals: 42}", "'equals' on entity must be a string, got a number"),
        ("{field: value.v, equals: [a, b]}", "'equals' on value.v must be a single value, not a list"),
        ("{field: value.v, in: []}", "'in' on value.v must not be empty"),
        ("{field: value.v, in: x}", "'in' on value.v must be a list, not a single value"),
        ("{field: scope, in: [local, 3]}", "an entry of 'in' on scope must be a string, got a number"),
        ("{field: value.v, cidr: 10.0.0.300/8}", "'cidr' on value.v: invalid network: '10.0.0.300/8' does not appear"),
        ("{field: value.v, cidr: 10.0.0.1/8}", "'cidr' on value.v: invalid network: 10.0.0.1/8 has host bits set"),
        ("{field: value.v, cidr: []}", "'cidr' on value.v must not be empty"),
    ],
)
def test_operand_type_errors(leaf, message):
    (error,) = errors(with_match(leaf + "\n"))
    assert error.startswith(f"line 7: {message}")


def test_unquoted_yaml_boolean_gets_a_quoting_hint():
    (error,) = errors(with_match("{field: scope, equals: no}\n"))
    assert error == (
        "line 7: 'equals' on scope must be a string, got a boolean "
        "(YAML reads the unquoted no as a boolean; quote it for a string)"
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("all: []\n", "line 7: 'all' must not be empty"),
        ("any: {field: entity, exists: true}\n", "line 7: 'any' must be a list, not a mapping"),
        (
            "not: [{field: entity, exists: true}]\n",
            "line 7: 'not' takes one match node, not a list: wrap several in all or any",
        ),
        (
            "all: [{field: entity, exists: true}]\nany: [{field: entity, exists: true}]\n",
            "line 8: a match node holds one combinator, found all and any: nest them",
        ),
        (
            "all: [{field: entity, exists: true}]\nfield: entity\n",
            "line 7: a match node is either a combinator (all, any, not) or a leaf (field and one operator)",
        ),
        ("{}\n", "line 7: empty match node"),
        ("all: [bash]\n", "line 7: a match node must be a mapping"),
    ],
)
def test_bad_combinators(block, message):
    assert errors(with_match(block))[0].startswith(message)


def test_match_depth_is_bounded():
    too_deep = "{not: " * MAX_MATCH_DEPTH + "{field: entity, exists: true}" + "}" * MAX_MATCH_DEPTH
    assert errors(with_match(too_deep + "\n")) == [f"line 7: match tree is nested deeper than {MAX_MATCH_DEPTH} levels"]
    deep_enough = "{not: " * (MAX_MATCH_DEPTH - 1) + "{field: entity, exists: true}" + "}" * (MAX_MATCH_DEPTH - 1)
    assert errors(with_match(deep_enough + "\n")) == []


# -- emits ----------------------------------------------------------------------------------------


def emit(tactic="TA0002", technique="T1059", sub="T1059.004", confidence="0.9", extra="") -> str:
    lines = [f"- tactic: {tactic}", f"  technique_id: {technique}"]
    if sub:
        lines.append(f"  sub_technique_id: {sub}")
    lines.append(f"  confidence: {confidence}")
    if extra:
        lines.append(f"  {extra}")
    return "\n".join(lines) + "\n"


def test_empty_emits():
    assert errors(replace_lines({11: "emits: []", 12: "", 13: "", 14: "", 15: ""})) == [
        "line 11: emits must not be empty"
    ]


def test_unknown_key_in_emits_entry():
    assert errors(with_emits(emit(extra="weight: 2"))) == [
        "line 16: unknown key 'weight' in emits entry (allowed: tactic, technique_id, sub_technique_id, confidence)"
    ]


def test_emits_entry_missing_confidence():
    text = with_emits("- tactic: TA0002\n  technique_id: T1059\n")
    assert errors(text) == ["line 12: emits entry is missing 'confidence'"]


def test_unknown_technique():
    assert errors(with_emits(emit(technique="T9999", sub=""))) == [
        "line 13: unknown technique_id 'T9999' (not in ATT&CK 18.1 Enterprise)"
    ]


def test_unknown_sub_technique():
    assert errors(with_emits(emit(sub="T1059.999"))) == [
        "line 14: unknown sub_technique_id 'T1059.999' (not in ATT&CK 18.1 Enterprise)"
    ]


def test_unknown_tactic():
    assert errors(with_emits(emit(tactic="TA0099"))) == [
        "line 12: unknown tactic 'TA0099' (not in ATT&CK 18.1 Enterprise)"
    ]


def test_tactic_must_belong_to_the_technique():
    assert errors(with_emits(emit(tactic="TA0003"))) == [
        "line 12: tactic TA0003 (Persistence) is not a tactic of T1059 (Command and Scripting Interpreter), "
        "which belongs to TA0002 (Execution)"
    ]


def test_sub_technique_of_another_parent():
    assert errors(with_emits(emit(tactic="TA0006", technique="T1003", sub="T1059.004"))) == [
        "line 14: sub_technique_id 'T1059.004' (Unix Shell) is a sub-technique of T1059, not of technique_id T1003",
    ]


def test_sub_technique_id_must_be_a_sub_technique():
    assert errors(with_emits(emit(sub="T1059"))) == [
        "line 14: sub_technique_id 'T1059' (Command and Scripting Interpreter) is a technique, not a sub-technique"
    ]


def test_technique_id_must_not_be_a_sub_technique():
    assert errors(with_emits(emit(technique="T1059.004", sub=""))) == [
        "line 13: technique_id 'T1059.004' is a sub-technique: "
        "write technique_id: T1059 and sub_technique_id: T1059.004"
    ]


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("1.5", "1.5"), ("-0.1", "-0.1")])
def test_emit_confidence_out_of_range(value, shown):
    assert errors(with_emits(emit(confidence=value))) == [
        f"line 15: emits confidence must be greater than 0 and at most 1, got {shown}"
    ]


def test_emit_confidence_must_be_a_number():
    assert errors(with_emits(emit(confidence="true"))) == [
        "line 15: emits confidence must be a finite number, got a boolean"
    ]


def test_emit_confidence_of_one_is_allowed():
    result = parse_rule(with_emits(emit(confidence="1")), "R0010.yaml")
    assert result.errors == []
    assert result.rule is not None and result.rule.emits[0].confidence == 1.0


def test_duplicate_emits_entry():
    assert errors(with_emits(emit() + emit(confidence="0.5"))) == ["line 16: duplicate emits entry for T1059.004"]


def test_revoked_technique_is_a_warning_not_an_error():
    text = with_emits(emit(technique="T1086", sub=""))
    result = parse_rule(text, "R0010.yaml")
    assert result.errors == []
    assert result.rule is not None and result.rule.emits[0].technique_id == "T1086"
    assert warnings(text) == ["line 13: T1086 (PowerShell) is revoked in ATT&CK 18.1; use T1059.001"]


def test_deprecated_technique_is_a_warning_not_an_error():
    text = with_emits(emit(tactic="TA0005", technique="T1064", sub=""))
    assert errors(text) == []
    assert warnings(text) == ["line 13: T1064 (Scripting) is deprecated in ATT&CK 18.1"]


# -- the document as a whole ----------------------------------------------------------------------


def test_yaml_syntax_error_reports_its_line():
    assert errors(replace_lines({4: "description: Reverse: shells"})) == [
        "line 4: invalid YAML: mapping values are not allowed here"
    ]


def test_unterminated_flow_list_reports_where_parsing_stopped():
    assert errors(replace_lines({5: 'applies_to: ["observed:command"'})) == [
        "line 6: invalid YAML: while parsing a flow sequence: expected ',' or ']', but got '<scalar>'"
    ]


@pytest.mark.parametrize(("text", "kind"), [("- rule_id: R0010\n", "a list"), ("just words\n", "a single value")])
def test_document_must_be_a_mapping(text, kind):
    assert errors(text) == [f"line 1: a rule file must be a mapping (rule_id: ..., match: ...), not {kind}"]


def test_empty_document():
    assert errors("# nothing but a comment\n") == ["line 1: rule file is empty"]


def test_second_document_is_refused():
    assert errors(VALID + "---\nrule_id: R0011\n") == [
        "line 17: invalid YAML: expected a single document in the stream: but found another document"
    ]


def test_aliases_are_refused():
    text = replace_lines({5: "applies_to: &relations [observed:command]", 16: "evidence_fields: *relations"})
    assert errors(text) == ["line 16: invalid YAML: YAML aliases (*name) are not allowed in rule files"]


def test_unsafe_tags_are_refused():
    assert errors(replace_lines({3: "name: !!python/object/apply:os.system [id]"})) == [
        "line 3: name must be a single value, not a list"
    ]
    (error,) = errors(replace_lines({3: "name: !!python/name:os.system ''"}))
    assert error.startswith("line 3: name: cannot read '': could not determine a constructor for the tag")


def test_unprintable_character_reports_its_line():
    assert errors(replace_lines({3: "name: bad\x00name"})) == [
        "line 3: invalid YAML: unacceptable character #x0000: special characters are not allowed"
    ]


def test_deeply_nested_yaml_is_an_error_not_a_crash():
    assert errors("a: " + "[" * 50_000) == ["line 1: invalid YAML: nested too deeply"]


def test_all_errors_are_collected_in_line_order():
    text = replace_lines(
        {
            2: "rule_version: 0",
            4: "descripton: typo",
            8: "    - field: value.text",
            12: "  - tactic: TA0099",
            15: "    confidence: 2",
        }
    )
    assert errors(text) == [
        "line 2: rule_version must be an integer from 1 to 2147483647, got 0",
        "line 4: unknown key 'descripton' in rule (allowed: rule_id, rule_version, name, description, applies_to, "
        "match, emits, evidence_fields)",
        "line 8: unknown field 'value.text' (fields: entity, relation, source, scope, confidence, value.type, "
        "value.v, garden_id)",
        "line 12: unknown tactic 'TA0099' (not in ATT&CK 18.1 Enterprise)",
        "line 15: emits confidence must be greater than 0 and at most 1, got 2",
    ]


def test_size_cap():
    padding = MAX_RULE_BYTES - len(VALID.encode()) - 2
    at_limit = VALID + "#" + "x" * padding + "\n"
    assert len(at_limit.encode()) == MAX_RULE_BYTES
    assert errors(at_limit) == []
    assert errors(at_limit + " ") == ["line 1: rule file exceeds 256 KiB"]


def test_size_cap_counts_utf8_bytes():
    # 100 Ki characters of 3 bytes each: under the cap in characters, over it in bytes.
    text = VALID + "# " + "€" * (100 * 1024) + "\n"
    assert errors(text) == ["line 1: rule file exceeds 256 KiB"]


def test_yaml_one_one_boolean_words_on_value_are_a_warning():
    text = with_match("{field: value.v, in: [on, 'off', true]}\n")
    assert errors(text) == []
    assert warnings(text) == [
        "line 7: an entry of 'in' on value.v: YAML reads the unquoted on as true; quote it for text"
    ]
