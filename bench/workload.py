"""Deterministic fact bodies for the benchmark scenarios and the seeding of the query scenario.

Every write scenario sends facts that were never stored before (a fresh CID, a new current
value), so the measured path is the full insert path, not the cheaper CID-dedup hit.
The seeded data set mimics a node that has been running a while: ``entities`` entities with
``FACTS_PER_ENTITY`` facts each, over ``RELATIONS_PER_ENTITY`` relations (the extra facts
supersede earlier values from the same source), written round by round in a shuffled entity
order, so one entity's facts are spread over the whole table as they would be in real use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

SOURCES = 50
FACTS_PER_ENTITY = 10
RELATIONS_PER_ENTITY = 8
SEED_ENTITY_PREFIX = "stigmem://bench/user/e"


def _value(n: int, k: int) -> dict:
    kind = (n + k) % 10
    if kind < 6:
        return {"type": "string", "v": f"observation {n}-{k}: the user prefers option {(n * 7 + k) % 13}"}
    if kind < 8:
        return {"type": "number", "v": (n * 31 + k) % 100_000}
    if kind == 8:
        return {"type": "boolean", "v": (n + k) % 2 == 0}
    return {"type": "ref", "v": f"stigmem://bench/doc/d{(n * 13 + k) % 50_000}"}


def write_fact(run: str, i: int) -> dict:
    """Fact number ``i`` of a write scenario: ten relations per entity, every fact new."""
    entity, relation = divmod(i, 10)
    return {
        "entity": f"stigmem://bench/user/{run}-{entity}",
        "relation": f"memory:r{relation}",
        "value": _value(i, relation),
        "source": f"stigmem://bench/agent/a{i % SOURCES}",
        "confidence": 0.9 if i % 3 == 0 else 1.0,
        "scope": "team" if i % 5 == 0 else "local",
    }


def write_fact_json(run: str, i: int) -> bytes:
    return json.dumps(write_fact(run, i), separators=(",", ":")).encode()


def batch_json(run: str, start: int, size: int) -> bytes:
    facts = [write_fact(run, i) for i in range(start, start + size)]
    return json.dumps({"facts": facts}, separators=(",", ":")).encode()


def seed_entity(n: int) -> str:
    return f"{SEED_ENTITY_PREFIX}{n}"


def seed_fact(n: int, j: int) -> dict:
    """Fact ``j`` (0..FACTS_PER_ENTITY-1) of seeded entity ``n``."""
    relation = j % RELATIONS_PER_ENTITY
    return {
        "entity": seed_entity(n),
        "relation": f"memory:r{relation}",
        "value": _value(n, j),
        # Same source as the fact it supersedes: a supersession, not a conflict.
        "source": f"stigmem://bench/agent/a{(n + relation) % SOURCES}",
        "confidence": 1.0,
        "scope": "local",
    }


def seed_order(entities: int, seed: int = 7) -> Iterator[tuple[int, int]]:
    """(entity, fact) pairs: round j writes fact j of every entity, entities shuffled per round."""
    rng = random.Random(seed)
    order = list(range(entities))
    for j in range(FACTS_PER_ENTITY):
        rng.shuffle(order)
        for n in order:
            yield n, j
