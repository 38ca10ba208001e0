"""Compile a validated rule into closures, once: evaluating a fact walks no tree and parses nothing.

Matching semantics (rule authors rely on these; WIRE.md §8.1):

- A field that is absent or null makes its leaf false, except ``exists: false``, which is true then.
  ``value.v`` of a ``null`` value is absent.
- Text operators (``regex``, ``contains``, ``icontains``, ``startswith``, ``endswith``, ``cidr``) and
  string operands of ``equals``/``in`` see a field's text form, which for ``value.v`` is the stored
  encoding of WIRE.md §2.2: booleans are ``"true"``/``"false"``, numbers ``str(v)`` (``42``, ``42.5``).
  Only the first ``MAX_MATCH_CHARS`` characters are examined: evaluation time stays bounded whatever a
  fact holds (a valid text value is at most 64 KiB of UTF-8, so it is never cut).
- ``regex`` is an unanchored RE2 search (linear time; no backreferences or look-around).
  ``icontains`` compares Unicode case-folded text.
- ``gt``/``gte``/``lt``/``lte`` and number operands of ``equals``/``in`` compare numerically (``42 ==
  42.0``); they see ``confidence`` and a numeric ``value.v`` (a JSON number, or the stored text of a
  ``number`` value). Booleans are never numbers. A boolean operand matches the text form.
- ``cidr`` reads an IP address at the start of the text form — alone, or followed by ``:port``,
  ``/...`` or whitespace; bracketed IPv6 (``[::1]:443``) too — and tests membership in any listed
  network. An IPv4-mapped IPv6 address counts as its IPv4 address. URLs are not unpacked.
- Odd input (a non-mapping fact, wrong types) never raises: the leaf is false.

Shortcuts that give the same answers faster (docs/PERFORMANCE.md, "TTP rules"): a regex runs only on
texts holding one of the literals every match contains (``required_literals``); each rule carries a
``screen`` of such literals for ``value.v``, which lets the engine skip a rule without walking its tree
(``may_match``, ``LiteralScreen`` for long values); a value's capped, UTF-8 and case-folded forms are
computed once per text, not once per leaf.
"""

from __future__ import annotations

import ipaddress
import math
import operator
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from ttprules.schema import Emit, ParsedRule, RuleError, compile_regex, parse_rule

try:  # the regex prefilter reads patterns with Python's own regex parser (see required_literals)
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - another Python: no prefilter, every regex runs
    _sre = _sre_parse = None

MAX_MATCH_CHARS = 64 * 1024
# Evidence is stored with every tag: a long value is cut, the tag still says where to look.
MAX_EVIDENCE_CHARS = 1024

Predicate = Callable[[Mapping[str, Any]], bool]
Getter = Callable[[Mapping[str, Any]], Any]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_COMPARE = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_NUMBER_TEXT = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?", re.ASCII)
_IP_TOKEN_END = re.compile(r"[\s/]")


class RuleInvalid(Exception):
    def __init__(self, errors: Iterable[RuleError]) -> None:
        self.errors: list[RuleError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class CompiledRule:
    rule_id: str
    rule_version: int
    name: str
    applies_to: tuple[str, ...]
    emits: tuple[Emit, ...]
    evidence_fields: tuple[str, ...]
    _predicate: Predicate = field(repr=False, compare=False)
    _exact: frozenset[str] = field(repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(repr=False, compare=False)
    # Case-folded strings one of which the fact's value text (``value_screen_text``) must contain for
    # the rule to match; None when the rule has no such requirement. See ``may_match``.
    screen: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    def applies(self, relation: str) -> bool:
        """Whether facts with this relation are evaluated: an exact entry or a trailing-* prefix."""
        if not isinstance(relation, str):
            return False
        return relation in self._exact or relation.startswith(self._prefixes)

    def matches(self, fact: Mapping[str, Any]) -> bool:
        return (type(fact) is dict or isinstance(fact, Mapping)) and self._predicate(fact)

    def may_match(self, screen_text: str | None) -> bool:
        """False only if the rule cannot match a fact whose ``value_screen_text`` is ``screen_text``:
        a cheap test that lets an engine skip most rules without walking their trees."""
        if self.screen is None:
            return True
        return screen_text is not None and any(literal in screen_text for literal in self.screen)

    def evidence(self, fact: Mapping[str, Any]) -> dict[str, Any]:
        """The evidence fields present in the fact, as JSON scalars (long text cut)."""
        if not isinstance(fact, Mapping):
            return {}
        evidence: dict[str, Any] = {}
        for name in self.evidence_fields:
            raw = _GETTERS[name](fact)
            if isinstance(raw, str):
                evidence[name] = raw[:MAX_EVIDENCE_CHARS]
            elif isinstance(raw, bool) or (_as_number(raw) is not None and _as_text(raw) is not None):
                evidence[name] = raw  # a JSON scalar that serializes (finite, within int-to-str limits)
        return evidence


def compile_text(text: str, filename: str) -> CompiledRule:
    """Validate and compile one rule file; raises RuleInvalid with every error."""
    parsed = parse_rule(text, filename)
    if parsed.rule is None:
        raise RuleInvalid(parsed.errors)
    return compile_rule(parsed.rule)


def compile_rule(rule: ParsedRule) -> CompiledRule:
    """Compile a rule that ``parse_rule`` accepted."""
    exact = frozenset(p for p in rule.applies_to if not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in rule.applies_to if p.endswith("*"))
    return CompiledRule(
        rule_id=rule.rule_id,
        rule_version=rule.rule_version,
        name=rule.name,
        applies_to=rule.applies_to,
        emits=rule.emits,
        evidence_fields=rule.evidence_fields,
        _predicate=_compile_node(rule.match),
        _exact=exact,
        _prefixes=prefixes,
        screen=_screen(rule.match),
    )


# -- field access -------------------------------------------------------------------------------


def _value_part(fact: Mapping[str, Any], key: str) -> Any:
    value = fact.get("value")
    return value.get(key) if type(value) is dict or isinstance(value, Mapping) else None


def _top(name: str) -> Getter:
    return lambda fact: fact.get(name)


_GETTERS: dict[str, Getter] = {
    "entity": _top("entity"),
    "relation": _top("relation"),
    "source": _top("source"),
    "scope": _top("scope"),
    "confidence": _top("confidence"),
    "garden_id": _top("garden_id"),
    "value.type": lambda fact: _value_part(fact, "type"),
    "value.v": lambda fact: _value_part(fact, "v"),
}


def _as_text(raw: Any) -> str | None:
    """A field's text form (WIRE.md §2.2 stored encoding), capped; None when it has none."""
    if type(raw) is str:
        return _cap(raw)
    if isinstance(raw, str):
        return raw[:MAX_MATCH_CHARS]
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        try:
            return str(raw)
        except ValueError:  # an int beyond Python's int-to-str digit limit
            return None
    return None


def _as_number(raw: Any) -> int | float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return raw if isinstance(raw, int) or math.isfinite(raw) else None


def _value_number(fact: Mapping[str, Any]) -> int | float | None:
    raw = _value_part(fact, "v")
    # A number value may arrive in its stored text form (value_v) rather than as a JSON number.
    if isinstance(raw, str) and _value_part(fact, "type") == "number":
        if len(raw) > 64 or not _NUMBER_TEXT.fullmatch(raw):
            return None
        return int(raw) if raw.lstrip("-").isdigit() else _as_number(float(raw))
    return _as_number(raw)


def value_screen_text(fact: Mapping[str, Any]) -> str | None:
    """The case-folded text form of the fact's ``value.v`` (what rule screens are checked against);
    None when it has none, or when the fact is no mapping."""
    if type(fact) is not dict and not isinstance(fact, Mapping):
        return None
    value = fact.get("value")
    if type(value) is not dict and not isinstance(value, Mapping):
        return None
    text = _as_text(value.get("v"))
    if text is None:
        return None
    return text.casefold() if len(text) < _SHORT_TEXT else _casefolded(text)


def _text_getter(name: str) -> Callable[[Mapping[str, Any]], str | None]:
    """``_as_text`` of a field, inlined: it runs for every text leaf of every rule a fact meets."""
    if name in ("value.v", "value.type"):
        key = name[len("value.") :]

        def value_text(fact: Mapping[str, Any]) -> str | None:
            value = fact.get("value")
            if type(value) is not dict and not isinstance(value, Mapping):
                return None
            raw = value.get(key)
            return _cap(raw) if type(raw) is str else _as_text(raw)

        return value_text

    def top_text(fact: Mapping[str, Any]) -> str | None:
        raw = fact.get(name)
        return _cap(raw) if type(raw) is str else _as_text(raw)

    return top_text


def _number_getter(name: str) -> Callable[[Mapping[str, Any]], int | float | None]:
    if name == "value.v":
        return _value_number
    raw = _GETTERS[name]
    return lambda fact: _as_number(raw(fact))


# -- text forms, computed once per text -----------------------------------------------------------
# Every text leaf of every rule a fact meets reads the same field again. A long text's capped copy,
# and any text's UTF-8 bytes (for RE2) and case-folded form (icontains, the regex prefilter), are
# kept for the last few texts seen, by object identity: an entry holds its text, so the id cannot
# be reused while it is cached. A fact's value is then converted once, not once per leaf. Short
# texts are converted directly: that is cheaper than the lookup.
_FORMS_KEPT = 8
_SHORT_TEXT = 256
_capped: dict[int, tuple[str, str]] = {}
_utf8_forms: dict[int, tuple[str, bytes]] = {}
_folded_forms: dict[int, tuple[str, str]] = {}


def _remember(cache: dict[int, tuple[str, Any]], text: str, form: Any) -> Any:
    if len(cache) >= _FORMS_KEPT:
        cache.clear()
    cache[id(text)] = (text, form)
    return form


def _cap(text: str) -> str:
    """``text[:MAX_MATCH_CHARS]`` (the same object when the text is no longer)."""
    if len(text) <= MAX_MATCH_CHARS:
        return text
    kept = _capped.get(id(text))
    if kept is not None and kept[0] is text:
        return kept[1]
    return _remember(_capped, text, text[:MAX_MATCH_CHARS])


def _utf8(text: str) -> bytes:
    # Encoding ourselves lets a lone surrogate through (surrogatepass) instead of raising.
    if len(text) < _SHORT_TEXT:
        return text.encode("utf-8", "surrogatepass")
    kept = _utf8_forms.get(id(text))
    if kept is not None and kept[0] is text:
        return kept[1]
    return _remember(_utf8_forms, text, text.encode("utf-8", "surrogatepass"))


def _casefolded(text: str) -> str:
    if len(text) < _SHORT_TEXT:
        return text.casefold()
    kept = _folded_forms.get(id(text))
    if kept is not None and kept[0] is text:
        return kept[1]
    return _remember(_folded_forms, text, text.casefold())


# -- the operator tree --------------------------------------------------------------------------


def _compile_node(node: Mapping[str, Any]) -> Predicate:
    # Loops rather than all()/any() over a generator: same short-circuit, less overhead per call.
    if "all" in node:
        children = tuple(_compile_node(child) for child in node["all"])

        def all_of(fact: Mapping[str, Any]) -> bool:
            for child in children:  # noqa: SIM110
                if not child(fact):
                    return False
            return True

        return all_of
    if "any" in node:
        children = tuple(_compile_node(child) for child in node["any"])

        def any_of(fact: Mapping[str, Any]) -> bool:
            for child in children:  # noqa: SIM110
                if child(fact):
                    return True
            return False

        return any_of
    if "not" in node:
        inner = _compile_node(node["not"])
        return lambda fact: not inner(fact)
    return _compile_leaf(node)


def _compile_leaf(node: Mapping[str, Any]) -> Predicate:
    name: str = node["field"]
    (op,) = (k for k in node if k != "field")
    operand = node[op]
    if op == "exists":
        raw = _GETTERS[name]
        return (lambda fact: raw(fact) is not None) if operand else (lambda fact: raw(fact) is None)
    if op in _COMPARE:
        number = _number_getter(name)
        compare = _COMPARE[op]
        return lambda fact: (n := number(fact)) is not None and compare(n, operand)
    if op in ("equals", "in"):
        return _compile_membership(name, [operand] if op == "equals" else operand)
    return _text_leaf(name, _text_test(op, operand))


def _text_leaf(name: str, test: Callable[[str], bool]) -> Predicate:
    """``test`` on the field's text form; false when it has none. The hottest path of evaluation (every
    text leaf of every rule a fact meets): ``_text_getter`` is inlined here."""
    if name in ("value.v", "value.type"):
        key = name[len("value.") :]

        def value_leaf(fact: Mapping[str, Any]) -> bool:
            value = fact.get("value")
            if type(value) is not dict and not isinstance(value, Mapping):
                return False
            raw = value.get(key)
            if type(raw) is str:
                return test(raw if len(raw) <= MAX_MATCH_CHARS else _cap(raw))
            text = _as_text(raw)
            return text is not None and test(text)

        return value_leaf

    def top_leaf(fact: Mapping[str, Any]) -> bool:
        raw = fact.get(name)
        if type(raw) is str:
            return test(raw if len(raw) <= MAX_MATCH_CHARS else _cap(raw))
        text = _as_text(raw)
        return text is not None and test(text)

    return top_leaf


def _compile_membership(name: str, operands: list[Any]) -> Predicate:
    """equals / in: strings (and booleans, as "true"/"false") against the text form, numbers numerically."""
    texts = frozenset(_as_text(v) for v in operands if isinstance(v, str | bool))
    # int and float hash alike when equal, so 42 in {42.0} holds.
    numbers = frozenset(v for v in operands if not isinstance(v, str | bool))
    text = _text_getter(name)
    number = _number_getter(name)
    if not numbers:
        return lambda fact: text(fact) in texts
    if not texts:
        return lambda fact: number(fact) in numbers
    return lambda fact: text(fact) in texts or number(fact) in numbers


def _text_test(op: str, operand: Any) -> Callable[[str], bool]:
    if op == "regex":
        return _regex_test(operand)
    if op == "contains":
        return lambda text: operand in text
    if op == "icontains":
        needle = operand.casefold()
        return lambda text: needle in _casefolded(text)
    if op == "startswith":
        return lambda text: text.startswith(operand)
    if op == "endswith":
        return lambda text: text.endswith(operand)
    if op == "cidr":
        networks = tuple(ipaddress.ip_network(n) for n in ([operand] if isinstance(operand, str) else operand))
        return lambda text: _in_networks(_leading_ip(text), networks)
    raise ValueError(f"not a text operator: {op}")


def _leading_ip(text: str) -> IPAddress | None:
    """The IP address a value starts with: "10.0.0.5", "10.0.0.5:443", "[2001:db8::1]:443", "::1 up"."""
    text = text[:128].strip()  # the longest address form is far shorter
    if text.startswith("["):
        token = text[1 : text.find("]")] if "]" in text else ""
    else:
        end = _IP_TOKEN_END.search(text)
        token = text[: end.start()] if end else text
    candidates = [token]
    if token.count(":") == 1:  # IPv4 with a port; IPv6 has at least two colons
        candidates.append(token.split(":", 1)[0])
    for candidate in candidates:
        try:
            return ipaddress.ip_address(candidate)
        except ValueError:
            continue
    return None


def _in_networks(address: IPAddress | None, networks: tuple[IPNetwork, ...]) -> bool:
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        mapped = address.ipv4_mapped
        return any(address in n or mapped in n for n in networks)
    return any(address in n for n in networks)


# -- regexes --------------------------------------------------------------------------------------


def _regex_test(pattern: str) -> Callable[[str], bool]:
    """An unanchored RE2 search, skipped when the text lacks every literal a match must contain."""
    matches = _re2_matcher(compile_regex(pattern))
    literals = required_literals(pattern)
    if literals is None:
        return lambda text: matches(_utf8(text))

    def prefiltered(text: str) -> bool:
        folded = text.casefold() if len(text) < _SHORT_TEXT else _casefolded(text)
        for literal in literals:
            if literal in folded:
                return matches(_utf8(text))
        return False

    return prefiltered


_NULL_SPAN = (-1, -1)


def _re2_matcher(compiled: Any) -> Callable[[bytes], bool]:
    """Whether ``compiled.search(data)`` finds a match, asked of RE2 directly.

    ``re2``'s ``search`` wraps the one C++ call (``RE2.Match``: unanchored, whole text) in a
    generator and a match object: three times the cost of the search on a short text. Falls back to
    ``search`` if the binding is not laid out as expected.
    """
    regexp = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    search = compiled.search
    if regexp is None or anchor is None or not _direct_match_works(regexp, anchor, search):
        return lambda data: search(data) is not None
    match = regexp.Match
    return lambda data: match(anchor, data, 0, len(data))[0] != _NULL_SPAN


def _direct_match_works(regexp: Any, anchor: Any, search: Callable[[bytes], Any]) -> bool:
    try:
        for data in (b"", b"x", b"\xff\xfe not utf-8", "caf\u00e9 \U0001d54f".encode()):
            if (regexp.Match(anchor, data, 0, len(data))[0] != _NULL_SPAN) != (search(data) is not None):
                return False
    except Exception:
        return False
    return True


# A literal shorter than this is in nearly every text: checking for it first costs more than it saves.
_MIN_LITERAL = 2


def required_literals(pattern: str) -> tuple[str, ...] | None:
    """Case-folded ASCII strings, one of which every text that ``pattern`` matches contains; None if
    no such set is known. The rule's regex then runs only on texts holding one of them.

    Sound by construction (a text is never skipped that RE2 would match):

    - The pattern is read with Python's regex parser, which reads RE2's syntax alike wherever it
      accepts it; what it rejects (``\\pL``, ``\\Q..\\E``, ``\\C``, ``\\z``, flags in mid-pattern...)
      gets no prefilter. POSIX classes (``[[:alpha:]]``), which Python reads as a set followed by
      a literal ``]``, are excluded by a ``[:`` anywhere in the pattern.
    - Required: a run of literal characters in a sequence, a group, a repetition of at least one;
      for an alternation, the union of every branch's (each must have one).
    - Only printable ASCII literal characters are used, and both sides are compared case-folded,
      whatever the case flags: RE2's ``(?i)`` matches an ASCII letter by its simple case folding
      (``k`` also matches U+212A KELVIN SIGN, ``s`` U+017F LONG S), and ``str.casefold`` maps each of
      those to the ASCII letter. Case folding maps character by character, so a substring of a text
      stays a substring of the folded text.
    """
    if _sre_parse is None or "[:" in pattern:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = _sre_parse.parse(pattern)
        found = _required(list(parsed))
    except Exception:  # Python cannot read it (RE2 syntax it lacks), or recursion too deep
        return None
    if not found or min(len(literal) for literal in found) < _MIN_LITERAL:
        return None
    return tuple(sorted(found))


def _strength(literals: frozenset[str]) -> tuple[int, int]:
    """Longer shortest literal first, then fewer alternatives."""
    return (min(len(literal) for literal in literals), -len(literals))


def _required(items: list[tuple[Any, Any]]) -> frozenset[str] | None:
    """The best set of literals one of which every match of this parsed sequence contains."""
    best: frozenset[str] | None = None
    run: list[str] = []

    def consider(candidate: frozenset[str] | None) -> None:
        nonlocal best
        if candidate and (best is None or _strength(candidate) > _strength(best)):
            best = candidate

    for op, arg in items:
        if op is _sre.LITERAL and 0x20 <= arg < 0x7F:
            run.append(chr(arg))
            continue
        if run:
            consider(frozenset({"".join(run).casefold()}))
            run = []
        if op is _sre.SUBPATTERN:  # (group, add_flags, del_flags, pattern)
            consider(_required(list(arg[-1])))
        elif op is _sre.BRANCH:  # (None, [pattern, ...])
            branches = [_required(list(branch)) for branch in arg[1]]
            if all(branches):
                consider(frozenset().union(*branches))
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT) and arg[0] >= 1:  # (min, max, pattern)
            consider(_required(list(arg[2])))
    if run:
        consider(frozenset({"".join(run).casefold()}))
    return best


# -- rule screens ---------------------------------------------------------------------------------

_SCREENED_TEXT_OPERATORS = ("contains", "icontains", "startswith", "endswith")


def _screen(node: Mapping[str, Any]) -> tuple[str, ...] | None:
    found = _node_screen(node)
    return tuple(sorted(found)) if found else None


def _node_screen(node: Mapping[str, Any]) -> frozenset[str] | None:
    """Case-folded strings one of which ``value_screen_text`` holds whenever ``node`` is true; None if
    none are known. Sound: each comes from a ``value.v`` text leaf that must be true for the node to be:

    - ``icontains X``: the leaf is exactly ``casefold(X) in casefold(text)``;
    - ``contains``/``startswith``/``endswith X`` (X ASCII): X in the text puts casefold(X) in the
      folded text (case folding maps character by character);
    - ``regex``: ``required_literals``;
    - ``all``: any one child's (each child must be true); ``any``: the union of every child's, if
      each has one; ``not`` and every other leaf: none.

    The leaves read the same capped text form that ``value_screen_text`` folds.
    """
    if "all" in node:
        best: frozenset[str] | None = None
        for child in node["all"]:
            found = _node_screen(child)
            if found and (best is None or _strength(found) > _strength(best)):
                best = found
        return best
    if "any" in node:
        children = [_node_screen(child) for child in node["any"]]
        if not children or not all(children):
            return None
        return frozenset().union(*children)
    if "not" in node or node.get("field") != "value.v":
        return None
    (op,) = (k for k in node if k != "field")
    operand = node[op]
    if op == "regex":
        literals = required_literals(operand)
        return frozenset(literals) if literals else None
    if op in _SCREENED_TEXT_OPERATORS and isinstance(operand, str):
        if op != "icontains" and not operand.isascii():
            return None
        folded = operand.casefold()
        return frozenset({folded}) if len(folded) >= _MIN_LITERAL else None
    return None


class LiteralScreen:
    """Which of many literals a (case-folded) text contains, in one pass over it.

    For long texts: ``literal in text`` for each of a thousand rules' literals scans 64 KiB a thousand
    times. Here one RE2 set of the literals (matched as literals, case-sensitively) reads the text's
    UTF-8 once; UTF-8 is self-synchronizing, so a literal occurs in the bytes exactly where it occurs
    in the text: the answer is the same as ``in``. The set also holds the empty literal, which every
    text contains: a result without it means RE2 gave up (its DFA ran out of memory), and ``present``
    then answers None, for the caller to check each literal with ``in``.
    """

    def __init__(self, literals: Iterable[str]) -> None:
        self.literals: tuple[str, ...] = tuple(sorted(set(literals)))
        self._set: Any = None
        if not self.literals:
            return
        try:
            options = re2.Options()
            options.literal = True
            options.log_errors = False  # RE2's default memory budget (8 MiB) is ample for thousands of literals
            compiled = re2.Set.SearchSet(options)
            if compiled.Add("") != 0:
                return
            for index, literal in enumerate(self.literals, start=1):
                if compiled.Add(literal) != index:
                    return
            compiled.Compile()
        except Exception:  # RE2 refused the set (too large): every literal is checked with ``in``
            return
        self._set = compiled

    def present(self, folded_text: str) -> frozenset[str] | None:
        """The literals ``folded_text`` contains; None when not known."""
        if self._set is None:
            return None
        try:
            found = self._set.Match(_utf8(folded_text))
        except Exception:
            return None
        if not found or found[0] != 0:
            return None
        literals = self.literals
        return frozenset(literals[index - 1] for index in found[1:])
