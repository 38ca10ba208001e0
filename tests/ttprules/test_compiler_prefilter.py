"""The compiler's shortcuts answer exactly as the plain evaluation would.

A regex runs only on texts holding one of its required literals (``required_literals``), and an engine
skips a rule whose screen (``CompiledRule.screen``) the fact's value lacks. Both must be sound: a text
RE2 would match is never skipped. Checked here against RE2 itself, on the shipped pack's patterns and
on random patterns and texts.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import pytest
import re2

from ttprules.compiler import (
    MAX_MATCH_CHARS,
    LiteralScreen,
    _regex_test,
    compile_text,
    required_literals,
    value_screen_text,
)
from ttprules.schema import compile_regex

RULES_DIR = Path(__file__).resolve().parents[2] / "ttprules" / "rules"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


def re2_matches(pattern: str, text: str) -> bool:
    return compile_regex(pattern).search(text.encode("utf-8", "surrogatepass")) is not None


def passes(literals: tuple[str, ...] | None, text: str) -> bool:
    return literals is None or any(literal in text.casefold() for literal in literals)


def pack_patterns() -> list[str]:
    patterns = []
    for path in sorted(RULES_DIR.glob("*.yaml")):
        patterns += [p.replace("''", "'") for p in re.findall(r"regex: '(.*)'", path.read_text(encoding="utf-8"))]
    return patterns


def corpus_texts() -> list[str]:
    texts = []
    for path in sorted(CORPUS_DIR.glob("*.yaml")):
        texts += [t.replace("''", "'") for t in re.findall(r"v: '(.*)'\}", path.read_text(encoding="utf-8"))]
    return texts


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"(?i)\bmimikatz\b|\binvoke-mimikatz\b", ("invoke-mimikatz", "mimikatz")),
        (r"/dev/(?:tcp|udp)/", ("/dev/",)),
        (r"(?:abc)?def", ("def",)),
        (r"ab+cd", ("cd",)),
        (r"(?:ab){2,}x", ("ab",)),
        (r"(?i)FOO\.exe", ("foo.exe",)),
        (r"(?:abc|def)", ("abc", "def")),
        (r"(?:abc|d)", None),  # a one-character literal is in nearly every text
        (r"(?:abc|\d+)", None),  # a branch without a literal
        (r"(?:abc)*", None),  # may repeat zero times
        (r"[[:alpha:]]+xyz", None),  # Python reads a POSIX class as a set and a literal "]"
        (r"\pL+xyz", None),  # RE2 syntax Python cannot read
        (r"\Qa.b\E", None),
        (r"caf\x{e9}", None),
        (r"café", ("caf",)),  # only ASCII characters are used
        (r"a\x00bc", ("bc",)),  # only printable ones
        (r".*", None),
    ],
)
def test_required_literals(pattern, expected):
    assert required_literals(pattern) == expected


def test_re2_case_insensitive_ascii_matches_fold_to_the_same_character():
    # The prefilter compares case-folded text: every character RE2's (?i) lets match an ASCII character
    # must case-fold to what that character folds to (K also matches U+212A KELVIN SIGN, s U+017F).
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    for c in string.printable[:95]:
        found = set(re2.findall("(?i)" + re2.escape(c), everything))
        assert all(f.casefold() == c.casefold() for f in found), (c, found)
    assert "\u212a" in re2.findall("(?i)k", everything)


@pytest.mark.parametrize("pattern", pack_patterns())
def test_pack_patterns_prefilter_is_sound_on_the_corpus(pattern):
    literals = required_literals(pattern)
    test = _regex_test(pattern)
    rng = random.Random(pattern)
    texts = corpus_texts()
    texts += [t.upper() for t in texts] + [t.replace("k", "\u212a").replace("s", "\u017f") for t in texts]
    texts += ["".join(ch.swapcase() if rng.random() < 0.5 else ch for ch in t) for t in texts[:300]]
    for text in texts:
        expected = re2_matches(pattern, text)
        assert test(text) is expected, text
        assert not expected or passes(literals, text), text


def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    atoms = ["a", "b", "k", "s", "K", "S", "ab", "ks", "sk", "-", r"\.", ".", "[ab]", "[^a]", r"\d", r"\s", r"\b"]
    parts = []
    for _ in range(rng.randrange(1, 4)):
        roll = rng.random()
        if roll < 0.55 or depth > 2:
            item = "".join(rng.choice(atoms) for _ in range(rng.randrange(1, 4)))
        elif roll < 0.75:
            item = "(?:" + "|".join(_random_pattern(rng, depth + 1) for _ in range(rng.randrange(1, 4))) + ")"
        elif roll < 0.85:
            item = "(?i:" + _random_pattern(rng, depth + 1) + ")"
        else:
            item = "(" + _random_pattern(rng, depth + 1) + ")"
        if rng.random() < 0.3:
            item = f"(?:{item})" + rng.choice(["*", "+", "?", "{2}", "{0,2}", "{1,3}", "+?"])
        parts.append(item)
    pattern = "".join(parts)
    return ("(?i)" if depth == 0 and rng.random() < 0.4 else "") + pattern


def _random_text(rng: random.Random) -> str:
    alphabet = "abksABKS-. 1\u212a\u017f\u00df"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def test_random_patterns_prefilter_is_sound():
    rng = random.Random(20261205)
    tested = 0
    for _ in range(1500):
        pattern = _random_pattern(rng)
        try:
            compile_regex(pattern)
        except re2.error:
            continue
        literals = required_literals(pattern)
        test = _regex_test(pattern)
        for _ in range(60):
            text = _random_text(rng)
            expected = re2_matches(pattern, text)
            assert test(text) is expected, (pattern, text)
            assert not expected or passes(literals, text), (pattern, text, literals)
            tested += 1
    assert tested > 50_000


RULE = """\
rule_id: R0001
rule_version: 1
name: screened
applies_to: ["observed:command"]
match:
{match}
emits:
  - {{tactic: TA0002, technique_id: T1059, confidence: 0.9}}
"""


def compiled(match: str):
    return compile_text(RULE.format(match=match), "R0001.yaml")


@pytest.mark.parametrize(
    ("match", "screen"),
    [
        ("  {field: value.v, regex: '(?i)nc\\s+-e|/dev/tcp/'}", ("/dev/tcp/", "nc")),
        ("  {field: value.v, icontains: 'ḰÖ'}", ("ḱö",)),  # icontains is the same test, any text
        ("  {field: value.v, contains: 'café'}", None),  # contains: ASCII only
        ("  {field: value.v, startswith: 'curl'}", ("curl",)),
        ("  {field: entity, contains: 'web'}", None),  # other fields are not screened
        ("  all:\n    - {field: scope, equals: team}\n    - {field: value.v, endswith: '.sh'}", (".sh",)),
        ("  any:\n    - {field: value.v, contains: ab}\n    - {field: value.v, contains: cd}", ("ab", "cd")),
        ("  any:\n    - {field: value.v, contains: ab}\n    - {field: scope, equals: team}", None),
        ("  not: {field: value.v, contains: ab}", None),
        ("  {field: value.v, in: [abc, 42]}", None),
    ],
)
def test_rule_screens(match, screen):
    assert compiled(match).screen == screen


def test_a_screened_out_rule_never_matches():
    rule = compiled("  all:\n    - {field: value.v, regex: '(?i)\\bwhoami\\b'}\n    - {field: scope, equals: team}")
    facts = [
        {"value": {"type": "string", "v": v}, "scope": "team"}
        for v in ["whoami", "WHOAMI /all", "\u212a whoami", "who ami", "", "x" * MAX_MATCH_CHARS + "whoami"]
    ]
    facts += [{"value": {"type": "null", "v": None}, "scope": "team"}, {"scope": "team"}, {"value": "odd"}]
    for fact in facts:
        if rule.matches(fact):
            assert rule.may_match(value_screen_text(fact)), fact
    assert [rule.matches(f) for f in facts[:6]] == [True, True, True, False, False, False]


def test_literal_screen_finds_exactly_the_literals_a_text_contains():
    rng = random.Random(7)
    alphabet = "ab-ß\u212a\u017fé "
    literals = {"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4))) for _ in range(200)}
    screen = LiteralScreen(literals)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))).casefold()
        assert screen.present(text) == {literal for literal in literals if literal in text}, text
    assert screen.present("\ud800 lone surrogate") == {literal for literal in literals if literal in " lone surrogate"}
    assert LiteralScreen([]).present("anything") is None  # nothing to look for: the caller checks nothing


def test_long_values_find_the_same_rules_as_the_plain_evaluation():
    # From engine._LONG_TEXT characters on, the screens are looked up in LiteralScreen's answer.
    from ttprules.attack import catalogue
    from ttprules.engine import ActiveRule, RuleIndex, Tally, evaluate_fact

    rules = [compile_text(p.read_text(encoding="utf-8"), p.name) for p in sorted(RULES_DIR.glob("*.yaml"))]
    index = RuleIndex([ActiveRule(r, "enabled", None) for r in rules], catalogue().version)
    rng = random.Random(11)
    filler = string.ascii_letters + string.digits + " ;|&/-.é\u212a\u017fß"
    found = 0
    for text in corpus_texts()[::3]:
        padding = "".join(rng.choice(filler) for _ in range(3000))
        for value in (padding + " " + text, text + " " + padding, (padding + " " + text).upper()):
            view = {"relation": "observed:command", "value": {"type": "text", "v": value}, "scope": "team"}
            fact = type("F", (), {"relation": "observed:command", "id": "f"})()
            got = {f.rule.rule.rule_id for f in evaluate_fact(index, fact, view, Tally())}
            assert got == {r.rule_id for r in rules if r.applies("observed:command") and r.matches(view)}, value
            found += len(got)
    assert found > 100
