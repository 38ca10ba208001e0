"""Which decay policy governs a fact, and the effective confidence it gives (WIRE.md §7).

Precedence when several enabled policies of a tenant match a fact: the longest matching
``relation_prefix`` wins; at equal length a policy naming the fact's scope beats one for every
scope. Two policies with the same prefix and scope cannot exist (unique constraint), so exactly
one policy — or none — governs each fact.

Policies are read on every fact record (``effective_confidence``), so each process keeps a
tenant's enabled policies for ``CACHE_S`` seconds; a change made in this process is seen at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction

from decay.models import DecayPolicy
from stigmem.models import Fact

CACHE_S = 2.0

_lock = threading.Lock()
_cache: dict[str, tuple[float, list[DecayPolicy]]] = {}


def enabled_policies(tenant: str) -> list[DecayPolicy]:
    """The tenant's enabled policies, most specific first."""
    now = time.monotonic()
    entry = _cache.get(tenant)
    if entry is not None and now - entry[0] < CACHE_S:
        return entry[1]
    policies = load_enabled(tenant)
    with _lock:
        _cache[tenant] = (now, policies)
    return policies


def precedence(policy: DecayPolicy) -> tuple:
    """Sort key: most specific first (longest prefix, then a named scope), ties by age."""
    return (-len(policy.relation_prefix), policy.scope == "", policy.pk)


def load_enabled(tenant: str) -> list[DecayPolicy]:
    """The tenant's enabled policies, most specific first, read now (the sweep must not use a stale list)."""
    return sorted(DecayPolicy.objects.filter(tenant=tenant, enabled=True), key=precedence)


def changed(tenant: str) -> None:
    """Forget the cached policies of a tenant, now and when the current transaction commits."""
    with _lock:
        _cache.pop(tenant, None)
    transaction.on_commit(lambda: _cache.pop(tenant, None))


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def governing(policies: Iterable[DecayPolicy], relation: str, scope: str) -> DecayPolicy | None:
    """The policy that applies to a fact of this relation and scope (``policies`` most specific first)."""
    for policy in policies:
        if relation.startswith(policy.relation_prefix) and policy.scope in ("", scope):
            return policy
    return None


def decayed(confidence: float, age_s: float, half_life_s: float) -> float:
    """``confidence x 0.5^(age / half_life)``; a fact from the future has not decayed."""
    return confidence * 0.5 ** (max(0.0, age_s) / half_life_s)


def effective_confidence(fact: Fact, now: datetime) -> float | None:
    """The record's ``effective_confidence``: set when a policy with a half-life governs the fact."""
    policies = enabled_policies(fact.tenant)
    if not policies:
        return None
    policy = governing(policies, fact.relation, fact.scope)
    if policy is None or not policy.half_life_seconds:
        return None
    return decayed(fact.confidence, (now - fact.timestamp).total_seconds(), policy.half_life_seconds)
