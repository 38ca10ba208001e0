"""Topic builders, topic patterns, the pattern index and the Event log (DESIGN.md §3, §6)."""

from __future__ import annotations

import random

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmem import events
from stigmem.clock import clock_transaction
from stigmem.events import PatternIndex, TopicError, TopicPattern, build_index
from stigmem.models import Event, NodeClock

# --- topic builders ---------------------------------------------------------------------------

BUILDERS = [
    (events.ttp_rule_fired, "ttp.rule.fired."),
    (events.ttp_rule_state, "ttp.rule.state."),
    (events.ttp_rule_reloaded, "ttp.rule.reloaded."),
    (events.peer_status, "peer.status."),
]


@pytest.mark.parametrize(("builder", "prefix"), BUILDERS)
@pytest.mark.parametrize("segment", ["T1059", "rule-42_x", "peer:abc", "ÄÖ", "a/b"])
def test_builders_accept_plain_segments(builder, prefix, segment):
    topic = builder(segment)
    assert topic == prefix + segment
    # A built topic is matched by its literal pattern and by the family wildcard.
    assert TopicPattern.parse(topic).matches(topic)
    assert TopicPattern.parse(prefix + "*").matches(topic)


@pytest.mark.parametrize(("builder", "prefix"), BUILDERS)
@pytest.mark.parametrize(
    "segment", ["", "a.b", ".", "T1059.001", "*", "a*", ">", "x>", " ", "a b", "a\tb", "a\nb", "\u00a0", None, 5]
)
def test_builders_reject_bad_segments(builder, prefix, segment):
    with pytest.raises(TopicError):
        builder(segment)


def test_topic_error_is_a_value_error():
    assert issubclass(TopicError, ValueError)


# --- patterns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a.>.b",
        ">.a",
        "*x",
        "x*",
        "a.b*",
        "a.>b",
        "a..b",
        ".a",
        "a.",
        "",
        ".",
        "a b",
        "a.\tb",
        "fact. asserted",
        "x" * 256,
    ],
)
def test_invalid_patterns(text):
    with pytest.raises(TopicError):
        TopicPattern.parse(text)


@pytest.mark.parametrize("text", [None, 5, ["fact"]])
def test_non_string_patterns(text):
    with pytest.raises(TopicError):
        TopicPattern.parse(text)


@pytest.mark.parametrize(
    "text", [">", "*", "fact.>", "*.>", "fact.*", "*.*", "ttp.rule.fired.T1059", "a.*.c.>", "x" * 255]
)
def test_valid_patterns(text):
    pattern = TopicPattern.parse(text)
    assert pattern.text == text
    assert pattern.tokens == tuple(text.split("."))


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("fact.>", "fact", False),
        ("fact.>", "fact.asserted", True),
        ("fact.>", "fact.a.b", True),
        ("fact.>", "facts.asserted", False),
        ("fact.>", "conflict.detected", False),
        (">", "fact", True),
        (">", "a.b.c.d", True),
        ("*", "fact", True),
        ("*", "fact.asserted", False),
        ("fact.*", "fact.asserted", True),
        ("fact.*", "fact", False),
        ("fact.*", "fact.a.b", False),
        ("*.asserted", "fact.asserted", True),
        ("*.asserted", "asserted", False),
        ("*.*", "a.b", True),
        ("*.*", "a.b.c", False),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
        ("fact.asserted", "fact.asserted", True),
        ("fact.asserted", "fact.asserted.x", False),
        ("fact.asserted", "fact", False),
        ("ttp.rule.fired.*", "ttp.rule.fired.T1059", True),
        ("ttp.rule.*.T1059", "ttp.rule.fired.T1059", True),
        ("ttp.rule.*.T1059", "ttp.rule.state.T1059", True),
        ("ttp.rule.*.T1059", "ttp.rule.fired.T1060", False),
        ("Fact.asserted", "fact.asserted", False),
        # '*' and '>' need non-empty tokens.
        ("*", "", False),
        ("fact.*", "fact.", False),
        ("*.b", ".b", False),
        (">", "", False),
        ("a.>", "a.", False),
        ("a.>", "a..b", False),
    ],
)
def test_matching(pattern, topic, expected):
    assert TopicPattern.parse(pattern).matches(topic) is expected
    index = build_index([(pattern, "key")])
    assert index.match(topic) == ({"key"} if expected else set())


# --- the pattern index --------------------------------------------------------------------------

TOKENS = ["a", "b", "c"]


def brute_force(patterns: list[tuple[str, object]], topic: str) -> set:
    return {key for text, key in patterns if TopicPattern.parse(text).matches(topic)}


pattern_texts = st.builds(
    lambda body, tail: ".".join(body + tail),
    st.lists(st.sampled_from([*TOKENS, "*"]), min_size=0, max_size=4),
    st.sampled_from([[], [">"]]),
).filter(bool)
topics = st.lists(st.sampled_from([*TOKENS, ""]), min_size=1, max_size=5).map(".".join)


@settings(max_examples=300, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    patterns=st.lists(st.tuples(pattern_texts, st.integers(0, 6)), min_size=0, max_size=25),
    probe=st.lists(topics, min_size=1, max_size=10),
)
def test_index_agrees_with_brute_force(patterns, probe):
    index = build_index(patterns)
    for topic in probe:
        assert index.match(topic) == brute_force(patterns, topic), topic


def test_index_agrees_with_brute_force_on_a_large_random_set():
    rng = random.Random(20260514)
    words = ["fact", "conflict", "ttp", "rule", "fired", "state", "peer", "status", "x", "y"]

    def random_pattern() -> str:
        tokens = [rng.choice([*words, "*", "*"]) for _ in range(rng.randint(0, 5))]
        if rng.random() < 0.3 or not tokens:
            tokens.append(">")
        return ".".join(tokens)

    patterns = [(random_pattern(), n) for n in range(2000)]
    index = build_index(patterns)
    compiled = [(TopicPattern.parse(text), key) for text, key in patterns]
    matched_something = 0
    for _ in range(1500):
        topic = ".".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        expected = {key for pattern, key in compiled if pattern.matches(topic)}
        assert index.match(topic) == expected, topic
        matched_something += bool(expected)
    assert matched_something > 100  # the comparison is not vacuous


def test_a_key_under_several_matching_patterns_is_returned_once():
    index = PatternIndex()
    for text in ("fact.asserted", "fact.*", "fact.>", "*.asserted", "*.*", ">", "*.>"):
        index.add(TopicPattern.parse(text), "sub-1")
    index.add(TopicPattern.parse("conflict.>"), "sub-2")
    index.add(TopicPattern.parse("fact.*"), "sub-3")
    result = index.match("fact.asserted")
    assert result == {"sub-1", "sub-3"}
    assert sorted(result) == ["sub-1", "sub-3"]
    assert index.match("conflict.detected") == {"sub-1", "sub-2"}
    assert index.match("fact") == {"sub-1"}  # only '>' matches a single token here
    assert PatternIndex().match("fact.asserted") == set()


def test_build_index_validates_patterns():
    with pytest.raises(TopicError):
        build_index([("fact.>", 1), ("a..b", 2)])


# --- the Event log ------------------------------------------------------------------------------


def test_publish_assigns_strictly_increasing_seq(db):
    start = NodeClock.objects.get(pk=1).last_event_seq
    published = [events.publish("default", events.FACT_EXPIRED, {"n": n}) for n in range(5)]
    seqs = [event.seq for event in published]
    assert seqs == list(range(start + 1, start + 6))
    assert NodeClock.objects.get(pk=1).last_event_seq == seqs[-1]
    stored = list(Event.objects.filter(seq__gt=start).order_by("seq").values_list("seq", "topic", "payload"))
    assert stored == [(seq, "fact.expired", {"n": n}) for n, seq in enumerate(seqs)]
    assert all(event.created_at is not None and event.tenant == "default" for event in published)


def test_emit_inside_one_clock_transaction(db):
    with clock_transaction() as clock:
        first = events.emit(clock, "t1", events.CONFLICT_DETECTED, {"i": 1})
        second = events.emit(clock, "t2", events.ttp_rule_state("r1"), {"i": 2})
        # publish inside the caller's clock transaction shares the lease.
        third = events.publish("t1", events.SUBSCRIPTION_DISABLED, {"i": 3})
    assert first.seq < second.seq < third.seq
    assert [first.seq + 1, first.seq + 2] == [second.seq, third.seq]
    assert NodeClock.objects.get(pk=1).last_event_seq == third.seq
    assert Event.objects.get(seq=second.seq).topic == "ttp.rule.state.r1"
    assert Event.objects.get(seq=third.seq).tenant == "t1"


def test_a_rolled_back_event_leaves_no_gap(db):
    before = events.publish("default", events.FACT_TOMBSTONED, {"n": 0})

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        events.publish("default", events.FACT_TOMBSTONED, {"n": 1})
        raise Boom
    after = events.publish("default", events.FACT_TOMBSTONED, {"n": 2})
    assert after.seq == before.seq + 1
    assert list(Event.objects.filter(seq__gte=before.seq).values_list("payload", flat=True).order_by("seq")) == [
        {"n": 0},
        {"n": 2},
    ]


def test_event_and_fact_sequences_are_independent(client):
    body = {
        "entity": "stigmem://test/user/frank",
        "relation": "memory:x",
        "value": {"type": "number", "v": 1},
        "source": "stigmem://test/agent/w",
    }
    clock = NodeClock.objects.get(pk=1)
    event = events.publish("default", events.FACT_EXPIRED, {})
    fact = client.post("/v1/facts", body, format="json")
    assert fact.status_code == 201
    after = NodeClock.objects.get(pk=1)
    assert after.last_event_seq == clock.last_event_seq + 1 == event.seq
    assert after.last_fact_seq == clock.last_fact_seq + 1
    second = events.publish("default", events.FACT_EXPIRED, {})
    assert second.seq == event.seq + 1


def test_a_conflict_appends_a_conflict_detected_event(client):
    start = NodeClock.objects.get(pk=1).last_event_seq
    for source, value in (("stigmem://test/agent/one", "a"), ("stigmem://test/agent/two", "b")):
        client.post(
            "/v1/facts",
            {
                "entity": "stigmem://test/user/gina",
                "relation": "memory:y",
                "value": {"type": "string", "v": value},
                "source": source,
            },
            format="json",
        )
    conflict = client.get("/v1/conflicts").json()["conflicts"][0]
    new_events = list(Event.objects.filter(seq__gt=start).order_by("seq"))
    assert [e.topic for e in new_events] == ["conflict.detected"]
    payload = new_events[0].payload
    assert payload["conflict_id"] == conflict["conflict_id"]
    assert {payload["fact_a"], payload["fact_b"]} == {conflict["fact_a"]["id"], conflict["fact_b"]["id"]}
    assert payload["status"] == "unresolved"
    assert new_events[0].tenant == "default"

    resolved = client.post(
        f"/v1/conflicts/{conflict['conflict_id']}/resolve",
        {"winning_fact_id": conflict["fact_a"]["id"]},
        format="json",
    )
    assert resolved.status_code == 200
    latest = Event.objects.order_by("-seq").first()
    assert latest.topic == "conflict.resolved"
    assert latest.seq == new_events[0].seq + 1
    assert latest.payload["status"] == "resolved"
