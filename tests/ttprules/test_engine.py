"""The TTP engine (WIRE.md §8.3): facts written through the API, evaluated by the ``ttp`` consumer,
tags, tag facts, events and counters checked through the database and the service functions."""

from __future__ import annotations

import uuid

import pytest

from stigmem.models import ConsumerCursor, Event, Fact
from stigmem.node import node_authority
from ttprules import engine
from ttprules.compiler import CompiledRule
from ttprules.models import RuleStats, Tag
from ttprules.store import set_state

from .engine_helpers import (
    DNS_ANYTHING,
    HOST,
    REVERSE_SHELL,
    SHELL,
    engine_position,
    load_rules,
    observe,
    run_engine,
    write_rule,
)


@pytest.fixture
def rules(tmp_path, db):
    return load_rules(tmp_path / "rules", R1=REVERSE_SHELL, D1=DNS_ANYTHING)


def stats(rule_id: str) -> RuleStats | None:
    return RuleStats.objects.filter(rule_id=rule_id).first()


def test_a_matching_fact_gets_a_tag_a_tag_fact_and_two_events(client, rules):
    fact = observe(client, SHELL)
    run_engine()

    (tag,) = Tag.objects.all()
    assert tag.fact_id == uuid.UUID(fact["id"])
    assert (tag.rule_id, tag.rule_version, tag.tactic) == ("R1", 1, "TA0002")
    assert (tag.technique_id, tag.sub_technique_id, tag.confidence) == ("T1059", "T1059.004", 0.9)
    assert tag.evidence == {"entity": HOST, "value.v": SHELL}
    assert tag.attack_version == "18.1"
    assert tag.tenant == "default" and tag.entity == HOST

    tag_fact = tag.tag_fact
    assert (tag_fact.entity, tag_fact.relation, tag_fact.value_v) == (HOST, "ttp:technique", "T1059.004")
    assert tag_fact.source == f"stigmem://{node_authority()}/rule/r1"
    assert (tag_fact.confidence, tag_fact.scope, tag_fact.tenant) == (0.9, "team", "default")
    assert tag_fact.derived_from == [{"fact_id": fact["id"]}]

    tagged = Event.objects.filter(topic="ttp.tagged")
    fired = Event.objects.filter(topic="ttp.rule.fired.T1059")
    assert [e.payload for e in tagged] == [engine.tag_record(tag)] == [e.payload for e in fired]
    assert tagged.get().tenant == "default"
    assert engine.tag_record(tag)["id"] == str(tag.id)

    row = stats("R1")
    assert (row.matched, row.tags, row.shadow_tags, row.dropped, row.errors) == (1, 1, 0, 0, 0)
    assert row.last_matched_at is not None


def test_the_tag_id_is_a_uuid5_over_fact_rule_version_and_technique(client, rules):
    fact = observe(client, SHELL)
    run_engine()
    name = f"{fact['id']}|R1|1|T1059|T1059.004"
    assert Tag.objects.get().id == uuid.uuid5(engine.TAG_NAMESPACE, name)


def test_re_evaluating_the_log_writes_and_announces_nothing_new(client, rules):
    observe(client, SHELL)
    run_engine()
    before = (Tag.objects.count(), Fact.objects.count(), Event.objects.count())
    ConsumerCursor.objects.filter(consumer="ttp").update(position=0)  # replay the whole log

    run_engine()

    assert (Tag.objects.count(), Fact.objects.count(), Event.objects.count()) == before
    assert stats("R1").tags == 1


def test_a_new_rule_version_tags_the_same_fact_again(client, rules):
    observe(client, SHELL)
    run_engine()
    write_rule(rules, REVERSE_SHELL, "R1", version=2)
    load_rules(rules)
    ConsumerCursor.objects.filter(consumer="ttp").update(position=0)

    run_engine()

    assert sorted(Tag.objects.values_list("rule_version", flat=True)) == [1, 2]


def test_facts_that_match_nothing_advance_the_cursor_and_write_nothing(client, rules):
    fact = observe(client, "ls -la /home")
    run_engine()
    assert engine_position() >= Fact.objects.get(id=fact["id"]).seq
    assert not Tag.objects.exists()
    assert not Event.objects.filter(topic="ttp.tagged").exists()
    assert not Event.objects.filter(topic__startswith="ttp.rule.fired.").exists()
    assert stats("R1") is None


def test_rules_for_other_relations_are_never_evaluated(client, rules, monkeypatch):
    evaluated: list[str] = []
    original = CompiledRule.matches

    def spy(self, fact):
        evaluated.append(self.rule_id)
        return original(self, fact)

    monkeypatch.setattr(CompiledRule, "matches", spy)
    observe(client, SHELL)
    observe(client, "evil.example", relation="observed:dns_query")
    observe(client, "something else", relation="observed:other")
    run_engine()

    assert evaluated == ["R1", "D1"]
    assert engine.current_index().rules_for("observed:dns_query")[0].rule.rule_id == "D1"
    assert engine.current_index().rules_for("observed:dnsx") != ()  # a trailing * is a prefix
    assert engine.current_index().rules_for("observed:commands") == ()  # no * is exact


def test_one_failing_rule_is_counted_and_neither_stops_the_others_nor_the_cursor(client, tmp_path, db, monkeypatch):
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL, R2=REVERSE_SHELL)
    original = CompiledRule.matches

    def broken(self, fact):
        if self.rule_id == "R1":
            raise RuntimeError("boom")
        return original(self, fact)

    monkeypatch.setattr(CompiledRule, "matches", broken)
    fact = observe(client, SHELL)
    run_engine()

    assert list(Tag.objects.values_list("rule_id", flat=True)) == ["R2"]
    assert engine_position() >= Fact.objects.get(id=fact["id"]).seq
    row = stats("R1")
    assert (row.errors, row.matched, row.tags) == (1, 0, 0)
    assert row.last_error == "RuntimeError: boom" and row.last_error_at is not None


def test_a_failing_write_rolls_the_batch_back_and_it_is_retried(client, rules, monkeypatch):
    fact = observe(client, SHELL)
    calls = {"n": 0}
    original = engine.Tag.objects.bulk_create

    def failing_once(objs, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database went away")
        return original(objs, *args, **kwargs)

    monkeypatch.setattr(engine.Tag.objects, "bulk_create", failing_once)
    run_engine()
    assert engine_position() < Fact.objects.get(id=fact["id"]).seq
    assert not Tag.objects.exists() and not Fact.objects.filter(relation="ttp:technique").exists()
    assert not Event.objects.filter(topic="ttp.tagged").exists()

    run_engine()
    assert Tag.objects.count() == 1 and Fact.objects.filter(relation="ttp:technique").count() == 1
    assert Event.objects.filter(topic="ttp.tagged").count() == 1


def test_disabled_rules_write_nothing(client, rules):
    set_state("R1", "disabled", set_by="test")
    observe(client, SHELL)
    run_engine()
    assert not Tag.objects.exists()
    assert stats("R1") is None


def test_clipped_rules_fire_at_most_confidence_max(client, rules):
    set_state("R1", "clipped", confidence_max=0.4, set_by="test")
    observe(client, SHELL)
    run_engine()
    tag = Tag.objects.get()
    assert tag.confidence == 0.4 and tag.tag_fact.confidence == 0.4


def test_tags_below_the_floor_are_dropped_and_counted(client, rules):
    set_state("R1", "clipped", confidence_max=0.29, set_by="test")
    observe(client, SHELL)
    run_engine()
    assert not Tag.objects.exists() and not Fact.objects.filter(relation="ttp:technique").exists()
    row = stats("R1")
    assert (row.matched, row.dropped, row.tags) == (1, 1, 0)


def test_a_rule_confidence_below_the_floor_is_dropped(client, tmp_path, db):
    write_rule(tmp_path / "rules", REVERSE_SHELL, "R1", confidence=0.2)
    load_rules(tmp_path / "rules")
    observe(client, SHELL)
    run_engine()
    assert not Tag.objects.exists()
    assert stats("R1").dropped == 1


def test_shadow_rules_count_would_be_tags_and_emit_nothing(client, rules):
    set_state("R1", "shadow", set_by="test")
    facts_before = Fact.objects.count()
    observe(client, SHELL)
    run_engine()
    assert not Tag.objects.exists()
    assert Fact.objects.count() == facts_before + 1  # only the observation
    assert not Event.objects.filter(topic__startswith="ttp.rule.fired").exists()
    assert not Event.objects.filter(topic="ttp.tagged").exists()
    row = stats("R1")
    assert (row.matched, row.shadow_tags, row.tags) == (1, 1, 0)


def test_a_state_change_is_honoured_by_the_next_batch(client, rules):
    set_state("R1", "disabled", set_by="test")
    observe(client, SHELL)
    run_engine()
    set_state("R1", "enabled", set_by="test")
    observe(client, SHELL + " ")
    run_engine()
    assert Tag.objects.count() == 1


@pytest.mark.parametrize(
    "source",
    [
        "stigmem://acme/rule/r9",  # another node's rule
        "stigmem://ACME/Rule/R9",
    ],
)
def test_facts_sourced_from_rules_are_never_evaluated(client, rules, source):
    observe(client, SHELL, source=source)
    run_engine()
    assert not Tag.objects.exists()


def test_the_engines_own_tag_facts_are_not_evaluated(client, tmp_path, db):
    # A rule that would match its own tag facts (any relation, any value) tags the observation only.
    write_rule(
        tmp_path / "rules",
        DNS_ANYTHING.replace('["observed:dns*"]', '["*"]'),
        "ANY",
    )
    load_rules(tmp_path / "rules")
    observe(client, "x.example", relation="observed:dns_query")
    run_engine()
    run_engine()
    assert Tag.objects.count() == 1
    assert Fact.objects.filter(relation="ttp:technique").count() == 1


def test_retractions_are_not_evaluated(client, rules):
    observe(client, SHELL, confidence=0.0)
    run_engine()
    assert not Tag.objects.exists()


def test_tags_belong_to_the_facts_tenant(make_client, rules):
    other = make_client(["read", "write"], tenant="other")
    observe(other, SHELL)
    run_engine()
    tag = Tag.objects.get()
    assert tag.tenant == "other" and tag.tag_fact.tenant == "other"
    assert Event.objects.get(topic="ttp.tagged").tenant == "other"


def test_a_fact_in_a_garden_is_tagged_inside_that_garden(client, rules):
    created = client.post("/v1/gardens", {"slug": "ir", "name": "IR", "scope": "team"}, format="json")
    assert created.status_code == 201, created.content
    fact = observe(client, SHELL, garden_id=f"stigmem://{node_authority()}/garden/ir")
    run_engine()
    tag = Tag.objects.get()
    assert tag.tag_fact.garden == Fact.objects.get(id=fact["id"]).garden != ""


def test_two_matches_of_one_entity_share_the_tag_fact(client, rules):
    observe(client, SHELL)
    observe(client, SHELL + " # again")
    run_engine()
    tags = list(Tag.objects.all())
    assert len(tags) == 2
    assert tags[0].tag_fact_id == tags[1].tag_fact_id
    assert Event.objects.filter(topic="ttp.tagged").count() == 2


def test_the_index_follows_the_revision(client, rules):
    first = engine.current_index()
    assert engine.current_index() is first
    set_state("D1", "disabled", set_by="test")
    second = engine.current_index()
    assert second is not first
    assert [a.rule.rule_id for a in second.rules] == ["R1"]


def test_facts_no_rule_applies_to_are_read_without_their_values(client, rules):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from stigmem import logtail

    observe(client, "x" * 1000, relation="memory:note")
    consumer = next(c for c in logtail.consumers() if c.name == engine.CONSUMER)
    with CaptureQueriesContext(connection) as queries:
        assert logtail.run_batch(consumer) == 1
    fact_reads = [q["sql"] for q in queries.captured_queries if 'FROM "stigmem_fact"' in q["sql"]]
    assert fact_reads and not any("value_v" in sql for sql in fact_reads)


def test_facts_a_rule_applies_to_are_loaded_whole_in_one_query(client, rules):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(3):
        observe(client, f"{SHELL} #{n}")
    observe(client, "x", relation="memory:note")
    rows = list(Fact.objects.only(*engine.LOG_COLUMNS).order_by("seq"))  # as the consumer reads the log
    with CaptureQueriesContext(connection) as queries:
        batch = engine.evaluate_batch(rows)
    value_reads = [q for q in queries.captured_queries if "value_v" in q["sql"]]
    assert len(value_reads) == 1
    assert len(batch.findings) == 3 and {f.fact.value_v for f in batch.findings} == {f"{SHELL} #{n}" for n in range(3)}


def test_tags_of_several_techniques_on_one_entity_raise_no_conflict(client, rules):
    from stigmem.models import Conflict

    observe(client, SHELL)
    observe(client, "evil.example", relation="observed:dns_query")
    run_engine()
    assert sorted(Fact.objects.filter(relation="ttp:technique").values_list("value_v", flat=True)) == [
        "T1059.004",
        "T1071.004",
    ]
    assert not Conflict.objects.exists()
    assert not Event.objects.filter(topic="conflict.detected").exists()
    assert not Fact.objects.filter(relation="ttp:technique", contradicted=True).exists()
