"""The one write path for facts: ``assert_facts`` (DESIGN.md §2, §4).

The API, federation ingest and TTP tag emission all write through here. One call is one
transaction holding the node clock: CID dedup, insert, current-value heads, conflicts and
events commit together, and the log consumers are kicked after commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from django.db.models import Q
from django.utils import timezone

from stigmem import audit, bulk, events, gardens, logtail, metrics
from stigmem.auth import Caller
from stigmem.clock import clock_transaction
from stigmem.errors import forbidden
from stigmem.fact_input import FactInput
from stigmem.models import Conflict, Fact, FactHead

Key = tuple[str, str, str, str]  # (entity, relation, scope, garden)
_CHUNK = 500
MAX_AUDITED_IDS = 20


class Origin(StrEnum):
    LOCAL = "local"
    FEDERATION = "federation"
    RULE = "rule"


@dataclass
class AssertOutcome:
    fact: Fact
    created: bool
    warnings: list[str] = field(default_factory=list)


def authorize(caller: Caller, item: FactInput, *, loc: Sequence[str | int] = ("body",)) -> None:
    """May this caller write this fact? Raises 403/404/422 as WIRE.md §2.7 says.

    A fact named into a garden needs the garden's writer or admin role and the garden's scope;
    the garden is resolved here into ``item.garden``.
    """
    if item.value.interpret_as == "instruction" and not caller.has("admin"):
        raise forbidden("admin permission required for interpret_as: instruction")
    if item.garden_slug is not None:
        item.garden = str(gardens.garden_for_write(caller, item.garden_slug, item.scope, loc=loc).id)


def assert_facts(
    tenant: str,
    inputs: Sequence[FactInput],
    *,
    origin: Origin = Origin.LOCAL,
    record_conflicts: bool = True,
    actor: str = "",
) -> list[AssertOutcome]:
    """Store validated facts in one transaction, in order; identical content is not duplicated.

    Re-asserting stored content (same CID) returns the stored fact and makes it the current
    value again (A -> B -> A leaves A current). A confidence of 0 retracts: the key then has
    no current value. A fact that disagrees with the current value and comes from another
    source records a conflict; the same source changing its value supersedes silently.
    ``record_conflicts=False`` is for conflict resolution, whose new value settles the dispute.
    ``actor`` (who asked) goes into the write's audit entry.
    """
    if not inputs:
        return []
    now = timezone.now()
    with clock_transaction() as clock:
        stored = _facts_by_cid(tenant, {item.cid for item in inputs})
        received = _facts_by_id([item.remote.fact_id for item in inputs if item.remote is not None])
        before = _current_heads(tenant, {item.key for item in inputs})
        # One object per row, so flags set below (contradicted) show in every outcome.
        before = {key: stored.get((head.cid, head.garden), head) for key, head in before.items()}
        heads: dict[Key, Fact | None] = dict(before)
        new_facts: list[Fact] = []
        conflicts: list[Conflict] = []
        outcomes: list[AssertOutcome] = []
        for item in inputs:
            if item.remote is not None:
                # A fact from a peer that is already here (by id, or by content) changes nothing:
                # replication is idempotent and never moves a current value back.
                known = received.get(item.remote.fact_id) or stored.get((item.cid, item.garden))
                if known is not None:
                    outcomes.append(AssertOutcome(known, False, item.warnings))
                    continue
                fact = _new_fact(
                    tenant, item, seq=clock.next_fact_seq(), hlc=str(clock.merge(item.remote.hlc)), now=now
                )
                received[fact.id] = stored[(item.cid, item.garden)] = fact
                new_facts.append(fact)
                created = True
            else:
                fact = stored.get((item.cid, item.garden))
                created = fact is None
                if fact is None:
                    fact = _new_fact(tenant, item, seq=clock.next_fact_seq(), hlc=str(clock.tick()), now=now)
                    stored[(item.cid, item.garden)] = fact
                    new_facts.append(fact)
            current = heads.get(item.key)
            if item.confidence == 0.0:
                heads[item.key] = None
            else:
                if (
                    record_conflicts
                    and current is not None
                    and _disputes(current, fact)
                    and (created or not _conflict_exists(current, fact, conflicts))
                ):
                    conflicts.append(Conflict(tenant=tenant, fact_a=current, fact_b=fact, detected_at=now))
                    current.contradicted = fact.contradicted = True
                heads[item.key] = fact
            outcomes.append(AssertOutcome(fact, created, item.warnings))

        bulk.insert(new_facts)
        _save_heads(tenant, before, heads)
        if conflicts:
            Conflict.objects.bulk_create(conflicts)
            new_ids = {f.id for f in new_facts}
            older = {c.fact_a_id for c in conflicts if c.fact_a_id not in new_ids}
            older |= {c.fact_b_id for c in conflicts if c.fact_b_id not in new_ids}
            if older:
                Fact.objects.filter(id__in=older).update(contradicted=True)
            for conflict in conflicts:
                events.emit(clock, tenant, events.CONFLICT_DETECTED, conflict_payload(conflict))
        # One audit entry per write call (a batch is one entry), in the write's transaction; the
        # lean insert keeps it off the profile of the serialized write path (docs/PERFORMANCE.md).
        audit_row = audit.entry(
            tenant,
            "fact_write",
            actor=actor,
            detail={
                "origin": origin.value,
                "created": len(new_facts),
                "reasserted": len(inputs) - len(new_facts),
                "conflicts": len(conflicts),
                "fact_ids": [str(f.id) for f in new_facts[:MAX_AUDITED_IDS]],
            },
        )
        bulk.insert([audit_row])
        logtail.kick_on_commit()

    metrics.FACTS_WRITTEN.labels(origin=origin.value).inc(len(new_facts))
    if conflicts:
        metrics.CONTRADICTIONS.inc(len(conflicts))
    return outcomes


def conflict_payload(conflict: Conflict) -> dict[str, str]:
    return {
        "conflict_id": conflict.public_id,
        "fact_a": str(conflict.fact_a_id),
        "fact_b": str(conflict.fact_b_id),
        "status": conflict.status,
    }


def _new_fact(tenant: str, item: FactInput, *, seq: int, hlc: str, now) -> Fact:
    remote = item.remote
    return Fact(
        id=remote.fact_id if remote else uuid.uuid4(),
        seq=seq,
        tenant=tenant,
        entity=item.entity,
        relation=item.relation,
        value_type=item.value.value_type,
        value_v=item.value.value_v,
        interpret_as=item.value.interpret_as,
        source=item.source,
        confidence=item.confidence,
        scope=item.scope,
        garden=item.garden,
        timestamp=remote.timestamp if remote else now,
        hlc=hlc,
        valid_until=item.valid_until,
        valid_until_at=item.valid_until_at,
        cid=item.cid,
        derived_from=item.derived_from,
        received_from=remote.received_from if remote else None,
        origin_node_id=remote.origin_node_id if remote else None,
        origin_allowed_scopes=remote.origin_allowed_scopes if remote else None,
    )


def _disputes(current: Fact, new: Fact) -> bool:
    """A different value from a different source is a conflict; anything else is not."""
    if current.id == new.id or current.source == new.source:
        return False
    return (current.value_type, current.value_v) != (new.value_type, new.value_v)


def _conflict_exists(a: Fact, b: Fact, pending: list[Conflict]) -> bool:
    """An unresolved conflict between a and b: stored, or recorded earlier in this call."""
    if any({c.fact_a_id, c.fact_b_id} == {a.id, b.id} for c in pending):
        return True
    return Conflict.objects.filter(
        Q(fact_a=a, fact_b=b) | Q(fact_a=b, fact_b=a), status=Conflict.Status.UNRESOLVED
    ).exists()


def _chunks(values: Iterable, size: int = _CHUNK) -> Iterable[list]:
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start : start + size]


# The two lookups every write makes run as raw SQL: compiling the equivalent querysets cost
# more than the rest of a single-fact assert (docs/PERFORMANCE.md). ``raw()`` still builds
# model instances through the backend's converters.
def _placeholders(values: Sequence) -> str:
    return ", ".join(["%s"] * len(values))


def _facts_by_cid(tenant: str, cids: set[str]) -> dict[tuple[str, str], Fact]:
    """Stored facts with these CIDs, by (cid, garden): each garden space dedups on its own."""
    found: dict[tuple[str, str], Fact] = {}
    for chunk in _chunks(cids):
        sql = f"SELECT * FROM {Fact._meta.db_table} WHERE tenant = %s AND cid IN ({_placeholders(chunk)})"
        found.update(((f.cid, f.garden), f) for f in Fact.objects.raw(sql, [tenant, *chunk]))
    return found


def _facts_by_id(ids: list[uuid.UUID]) -> dict[uuid.UUID, Fact]:
    """Stored facts with these ids (facts received from peers keep their origin's id)."""
    found: dict[uuid.UUID, Fact] = {}
    for chunk in _chunks(ids):
        found.update((f.id, f) for f in Fact.objects.filter(id__in=chunk))
    return found


def _current_heads(tenant: str, keys: set[Key]) -> dict[Key, Fact]:
    relations = list({k[1] for k in keys})
    scopes = list({k[2] for k in keys})
    heads: dict[Key, Fact] = {}
    for entities in _chunks({k[0] for k in keys}):
        # A head's key is its fact's (entity, relation, scope, garden). A head whose fact has
        # expired is no current value: decay leaves the row in place (see ``FactHead``).
        sql = (
            "SELECT f.*"
            f" FROM {FactHead._meta.db_table} h JOIN {Fact._meta.db_table} f ON f.id = h.fact_id"
            f" WHERE h.tenant = %s AND h.entity IN ({_placeholders(entities)})"
            f" AND h.relation IN ({_placeholders(relations)}) AND h.scope IN ({_placeholders(scopes)})"
            " AND f.expired_at IS NULL"
        )
        for fact in Fact.objects.raw(sql, [tenant, *entities, *relations, *scopes]):
            key = (fact.entity, fact.relation, fact.scope, fact.garden)
            if key in keys:
                heads[key] = fact
    return heads


def _id_of(fact: Fact | None) -> uuid.UUID | None:
    return fact.id if fact is not None else None


def _save_heads(tenant: str, before: dict[Key, Fact], after: dict[Key, Fact | None]) -> None:
    changed = {k: f for k, f in after.items() if _id_of(before.get(k)) != _id_of(f)}
    cleared = [k for k, f in changed.items() if f is None]
    moved = [(tenant, *k, f.id) for k, f in changed.items() if f]
    for chunk in _chunks(cleared, 100):
        match = Q()
        for entity, relation, scope, garden in chunk:
            match |= Q(entity=entity, relation=relation, scope=scope, garden=garden)
        FactHead.objects.filter(match, tenant=tenant).delete()
    if moved:
        bulk.insert_values(
            FactHead,
            ["tenant", "entity", "relation", "scope", "garden", "fact"],
            moved,
            upsert_on=["tenant", "entity", "relation", "scope", "garden"],
            update=["fact"],
        )
