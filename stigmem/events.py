"""The node Event log, topic names and topic patterns (DESIGN.md §3, §6).

Topics are dot-separated tokens (``fact.expired``, ``ttp.rule.fired.T1059``). Patterns use
NATS semantics: ``*`` matches exactly one non-empty token; ``>`` matches one or more trailing
tokens and may only be the last token. ``PatternIndex`` matches a topic against many patterns
through a token trie, so the cost grows with the topic's length, not the number of patterns.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from stigmem import logtail
from stigmem.clock import ClockLease, clock_transaction
from stigmem.models import Event

FACT_ASSERTED = "fact.asserted"
FACT_RETRACTED = "fact.retracted"
FACT_EXPIRED = "fact.expired"
FACT_TOMBSTONED = "fact.tombstoned"
CONFLICT_DETECTED = "conflict.detected"
CONFLICT_RESOLVED = "conflict.resolved"
TTP_TAGGED = "ttp.tagged"
SUBSCRIPTION_DISABLED = "subscription.disabled"

_BAD_SEGMENT = re.compile(r"[.*>\s]")
MAX_TOPIC_LENGTH = 255


class TopicError(ValueError):
    """A topic segment or a pattern that is not well formed."""


MAX_SEGMENT_LENGTH = 128


def _segment(value: str) -> str:
    if not isinstance(value, str) or not value or _BAD_SEGMENT.search(value) or len(value) > MAX_SEGMENT_LENGTH:
        raise TopicError(
            f"invalid topic segment {value!r}: must be 1-{MAX_SEGMENT_LENGTH} characters, "
            "without '.', '*', '>' or whitespace"
        )
    return value


def ttp_rule_fired(technique_id: str) -> str:
    return f"ttp.rule.fired.{_segment(technique_id)}"


def ttp_rule_state(rule_id: str) -> str:
    return f"ttp.rule.state.{_segment(rule_id)}"


def ttp_rule_reloaded(rule_id: str) -> str:
    return f"ttp.rule.reloaded.{_segment(rule_id)}"


def peer_status(peer_id: str) -> str:
    return f"peer.status.{_segment(peer_id)}"


@dataclass(frozen=True)
class TopicPattern:
    text: str
    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        if not isinstance(text, str) or not text or len(text) > MAX_TOPIC_LENGTH:
            raise TopicError("a topic pattern must be a non-empty string of at most 255 characters")
        tokens = tuple(text.split("."))
        for position, token in enumerate(tokens):
            if not token:
                raise TopicError(f"topic pattern {text!r} has an empty token")
            if re.search(r"\s", token):
                raise TopicError(f"topic pattern {text!r} contains whitespace")
            if token == ">":
                if position != len(tokens) - 1:
                    raise TopicError(f"'>' may only be the last token (in {text!r})")
            elif token != "*" and ("*" in token or ">" in token):
                raise TopicError(f"wildcards must be whole tokens (in {text!r})")
        return cls(text, tokens)

    def matches(self, topic: str) -> bool:
        parts = topic.split(".")
        if "" in parts:  # a topic with an empty token is malformed: no wildcard matches it
            return False
        for position, token in enumerate(self.tokens):
            if token == ">":
                return len(parts) > position
            if position >= len(parts):
                return False
            if token != "*" and token != parts[position]:
                return False
        return len(parts) == len(self.tokens)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    ends: set[Hashable] = field(default_factory=set)  # patterns ending exactly here
    tails: set[Hashable] = field(default_factory=set)  # patterns ending here with '>'


class PatternIndex:
    """Many patterns, each with a key (e.g. a subscription id); match a topic to keys."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, pattern: TopicPattern, key: Hashable) -> None:
        node = self._root
        for token in pattern.tokens:
            if token == ">":
                node.tails.add(key)
                return
            node = node.children.setdefault(token, _Node())
        node.ends.add(key)

    def match(self, topic: str) -> set[Hashable]:
        found: set[Hashable] = set()
        parts = topic.split(".")
        if "" in parts:
            return found
        frontier = [self._root]
        for part in parts:
            next_frontier = []
            for node in frontier:
                if node.tails:  # '>' needs at least one token, and `part` is one
                    found.update(node.tails)
                for child_key in (part, "*"):
                    child = node.children.get(child_key)
                    if child is not None:
                        next_frontier.append(child)
            frontier = next_frontier
            if not frontier:
                break
        else:
            for node in frontier:
                found.update(node.ends)
        return found


def build_index(items: Iterable[tuple[str, Hashable]]) -> PatternIndex:
    index = PatternIndex()
    for text, key in items:
        index.add(TopicPattern.parse(text), key)
    return index


def emit(clock: ClockLease, tenant: str, topic: str, payload: dict[str, Any]) -> Event:
    """Append an event inside the caller's clock transaction."""
    return Event.objects.create(
        seq=clock.next_event_seq(), tenant=tenant, topic=topic, payload=payload, created_at=timezone.now()
    )


def publish(tenant: str, topic: str, payload: dict[str, Any]) -> Event:
    """Append an event in a transaction of its own (or the caller's, if it holds the clock)."""
    with clock_transaction() as clock:
        event = emit(clock, tenant, topic, payload)
        logtail.kick_on_commit()
    return event
