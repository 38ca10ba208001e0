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
"""

from __future__ import annotations

import ipaddress
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ttprules.schema import Emit, ParsedRule, RuleError, compile_regex, parse_rule

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

    def applies(self, relation: str) -> bool:
        """Whether facts with this relation are evaluated: an exact entry or a trailing-* prefix."""
        if not isinstance(relation, str):
            return False
        return relation in self._exact or relation.startswith(self._prefixes)

    def matches(self, fact: Mapping[str, Any]) -> bool:
        return isinstance(fact, Mapping) and self._predicate(fact)

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
    )


# -- field access -------------------------------------------------------------------------------


def _value_part(fact: Mapping[str, Any], key: str) -> Any:
    value = fact.get("value")
    return value.get(key) if isinstance(value, Mapping) else None


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


def _text_getter(name: str) -> Callable[[Mapping[str, Any]], str | None]:
    raw = _GETTERS[name]
    return lambda fact: _as_text(raw(fact))


def _number_getter(name: str) -> Callable[[Mapping[str, Any]], int | float | None]:
    if name == "value.v":
        return _value_number
    raw = _GETTERS[name]
    return lambda fact: _as_number(raw(fact))


# -- the operator tree --------------------------------------------------------------------------


def _compile_node(node: Mapping[str, Any]) -> Predicate:
    if "all" in node:
        children = tuple(_compile_node(child) for child in node["all"])
        return lambda fact: all(child(fact) for child in children)
    if "any" in node:
        children = tuple(_compile_node(child) for child in node["any"])
        return lambda fact: any(child(fact) for child in children)
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
    text = _text_getter(name)
    test = _text_test(op, operand)
    return lambda fact: (t := text(fact)) is not None and test(t)


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
        search = compile_regex(operand).search
        # Encoding ourselves lets a lone surrogate through (surrogatepass) instead of raising.
        return lambda text: search(text.encode("utf-8", "surrogatepass")) is not None
    if op == "contains":
        return lambda text: operand in text
    if op == "icontains":
        needle = operand.casefold()
        return lambda text: needle in text.casefold()
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
