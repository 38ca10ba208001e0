"""``manage.py ttprules backfill``: facts written before a rule existed get its tags, exactly once."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from stigmem.models import Event, Fact
from ttprules.backfill import backfill
from ttprules.models import Tag

from .engine_helpers import DNS_ANYTHING, REVERSE_SHELL, engine_position, load_rules, run_engine
from .test_engine import SHELL, observe

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("ttprules", "backfill", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def written() -> tuple[int, int, int]:
    return Tag.objects.count(), Fact.objects.count(), Event.objects.count()


@pytest.fixture
def old_facts(client) -> list[int]:
    """Three matching facts evaluated by the engine while no rule existed, and one that never matches."""
    seqs = [Fact.objects.get(id=observe(client, f"{SHELL} #{n}")["id"]).seq for n in range(3)]
    observe(client, "ls")
    run_engine()
    assert not Tag.objects.exists()
    return seqs


def test_a_backfill_tags_old_facts_once_and_leaves_the_engines_cursor(old_facts, tmp_path):
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL)
    position = engine_position()
    last = Fact.objects.order_by("-seq").first().seq

    assert run() == f"seq 1..{last}: read=4 evaluated=4 new_tags=3\n"
    assert Tag.objects.count() == 3
    assert Event.objects.filter(topic="ttp.tagged").count() == 3
    assert engine_position() == position

    before = written()
    assert run().endswith("new_tags=0\n")
    assert written() == before


def test_a_range_limits_what_is_evaluated(old_facts, tmp_path):
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL)
    report = backfill(from_seq=old_facts[1], to_seq=old_facts[1])
    assert (report.read, report.tags) == (1, 1)
    assert list(Tag.objects.values_list("fact__seq", flat=True)) == [old_facts[1]]


def test_small_batches_cover_the_whole_range(old_facts, tmp_path):
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL)
    seen: list[int] = []
    report = backfill(batch_size=1, progress=lambda r: seen.append(r.position))
    assert report.tags == 3 and report.read == 4
    assert seen == sorted(seen) and len(seen) == 4


def test_only_the_given_rules(client, old_facts, tmp_path):
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL, R2=REVERSE_SHELL)
    run("--rule", "R2")
    assert set(Tag.objects.values_list("rule_id", flat=True)) == {"R2"}


def test_only_the_given_tenant(make_client, old_facts, tmp_path):
    other = make_client(["read", "write"], tenant="other")
    observe(other, SHELL)
    run_engine()
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL)
    run("--tenant", "other")
    assert list(Tag.objects.values_list("tenant", flat=True)) == ["other"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from-seq", "0"), "need 1 <= --from-seq <= --to-seq"),
        (("--from-seq", "5", "--to-seq", "4"), "need 1 <= --from-seq <= --to-seq"),
        (("--rule", "NOPE"), "not an active rule: NOPE"),
        (("--to-seq", str(2**63)), "--from-seq and --to-seq must be at most 9223372036854775807"),
        (("--from-seq", str(2**64), "--to-seq", str(2**64)), "--from-seq and --to-seq must be at most"),
    ],
)
def test_bad_options_exit_1_and_write_nothing(old_facts, tmp_path, args, message):
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL, D1=DNS_ANYTHING)
    before = written()
    with pytest.raises(CommandError, match=message) as raised:
        run(*args)
    assert raised.value.returncode == 1
    assert written() == before


def test_a_disabled_rule_cannot_be_backfilled(old_facts, tmp_path):
    from ttprules.store import set_state

    load_rules(tmp_path / "rules", R1=REVERSE_SHELL)
    set_state("R1", "disabled", set_by="test")
    with pytest.raises(CommandError, match="not an active rule: R1"):
        run("--rule", "R1")
    assert run().endswith("new_tags=0\n")
    assert not Tag.objects.exists()
