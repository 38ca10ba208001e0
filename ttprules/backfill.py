"""Re-evaluating a range of the fact log with the current rules (``manage.py ttprules backfill``).

After a rule is added or changed, the engine applies it to facts written from then on; a backfill
applies it to facts written before. It runs the engine's own evaluation and tag writing over the
range, batch by batch, each batch in its own transaction. Tag ids are deterministic, so a backfill
run twice — or over facts the engine has already evaluated — writes and announces only the tags that
are missing. The engine's cursor is not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Max

from stigmem.models import Fact
from ttprules import engine


@dataclass
class BackfillReport:
    first_seq: int
    last_seq: int
    read: int = 0  # facts in the range (of the tenant, if given)
    evaluated: int = 0  # of those, facts some rule applies to
    tags: int = 0  # new tags written
    position: int = 0  # the last seq done

    def summary(self) -> str:
        return (
            f"seq {self.first_seq}..{self.last_seq}: read={self.read} evaluated={self.evaluated} new_tags={self.tags}"
        )


def backfill(
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    tenant: str | None = None,
    rule_ids: Iterable[str] | None = None,
    batch_size: int = engine.BATCH_SIZE,
    progress: Callable[[BackfillReport], None] | None = None,
) -> BackfillReport:
    """Evaluate facts with ``from_seq <= seq <= to_seq`` (default: up to the newest) and write missing tags.

    ``rule_ids`` limits the evaluation to those rules (they must be active: disabled rules are never
    evaluated). The rules are those of the current revision, re-read between batches.
    """
    if to_seq is None:
        to_seq = Fact.objects.aggregate(last=Max("seq"))["last"] or 0
    report = BackfillReport(first_seq=from_seq, last_seq=to_seq, position=from_seq - 1)
    wanted = frozenset(rule_ids) if rule_ids is not None else None
    rows = Fact.objects.only(*engine.FACT_COLUMNS).order_by("seq")
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    while report.position < to_seq:
        batch = list(rows.filter(seq__gt=report.position, seq__lte=to_seq)[:batch_size])
        if not batch:
            break
        index = engine.current_index()
        if wanted is not None:
            index = engine.RuleIndex([a for a in index.rules if a.rule.rule_id in wanted], index.attack_version)
        evaluated = engine.evaluate_batch(batch, index)
        with transaction.atomic():
            created = engine.write_tags(evaluated)
        report.read += len(batch)
        report.evaluated += evaluated.tally.evaluated
        report.tags += len(created)
        report.position = batch[-1].seq
        if progress is not None:
            progress(report)
    report.position = max(report.position, to_seq)
    return report
