"""decay.policies: which policy governs a fact, the half-life formula, the per-process cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction

from decay import policies
from decay.models import DecayPolicy
from tests.decay.sweep_helpers import DAY, HOUR, T0, ago, body, frozen, write

pytestmark = pytest.mark.django_db


def make(prefix: str = "", scope: str = "", **rules) -> DecayPolicy:
    return DecayPolicy.objects.create(
        tenant=rules.pop("tenant", "default"), name=f"{prefix}|{scope}", relation_prefix=prefix, scope=scope, **rules
    )


def test_enabled_policies_are_ordered_most_specific_first():
    anything = make(ttl_seconds=1)
    team = make(scope="team", ttl_seconds=1)
    memory = make("memory:", ttl_seconds=1)
    memory_team = make("memory:", "team", ttl_seconds=1)
    longer = make("memory:x", ttl_seconds=1)
    make("memory:off", ttl_seconds=1, enabled=False)
    make("memory:", tenant="acme", ttl_seconds=1)
    assert policies.enabled_policies("default") == [longer, memory_team, memory, team, anything]


@pytest.mark.parametrize(
    ("relation", "scope", "expected"),
    [
        ("memory:x:1", "team", "memory:x|"),  # the longest prefix beats a scope match
        ("memory:y", "team", "memory:|team"),  # equal prefix: the named scope wins
        ("memory:y", "local", "memory:|"),
        ("other", "team", "|team"),
        ("other", "local", "|"),
        ("Memory:x", "local", "|"),  # prefixes are case-sensitive
    ],
)
def test_governing_follows_precedence(relation, scope, expected):
    for prefix, s in [("", ""), ("", "team"), ("memory:", ""), ("memory:", "team"), ("memory:x", "")]:
        make(prefix, s, ttl_seconds=1)
    governing = policies.governing(policies.enabled_policies("default"), relation, scope)
    assert governing.name == expected


def test_no_policy_governs_without_a_match():
    make("memory:", ttl_seconds=1)
    assert policies.governing(policies.enabled_policies("default"), "other", "local") is None


def test_same_prefix_and_scope_twice_is_impossible():
    make("memory:", "team", ttl_seconds=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        make("memory:", "team", ttl_seconds=2)
    assert DecayPolicy.objects.count() == 1


def test_decayed_halves_per_half_life_and_ignores_future_ages():
    assert policies.decayed(0.8, 0, HOUR) == 0.8
    assert policies.decayed(0.8, HOUR, HOUR) == pytest.approx(0.4)
    assert policies.decayed(0.8, 2 * HOUR, HOUR) == pytest.approx(0.2)
    assert policies.decayed(0.8, -HOUR, HOUR) == 0.8


def test_effective_confidence_only_under_a_half_life():
    make("memory:", half_life_seconds=DAY)
    make("memory:ttl", ttl_seconds=HOUR)  # more specific, no half-life: nothing decays
    decaying, plain = write(ago(DAY), body("a"), body("b", relation="memory:ttl"))
    assert policies.effective_confidence(decaying, T0) == pytest.approx(0.5)
    assert policies.effective_confidence(plain, T0) is None
    assert policies.effective_confidence(decaying, T0 - timedelta(days=5)) == 1.0


def test_changes_are_seen_after_changed_or_the_cache_expiry(monkeypatch):
    (fact,) = write(ago(DAY), body("a"))
    assert policies.effective_confidence(fact, T0) is None  # caches "no policies"
    policy = make("memory:", half_life_seconds=DAY)
    assert policies.effective_confidence(fact, T0) is None  # still the cached list
    policies.changed("default")
    assert policies.effective_confidence(fact, T0) == pytest.approx(0.5)
    DecayPolicy.objects.filter(pk=policy.pk).update(half_life_seconds=2 * DAY)
    clock = [1000.0]
    monkeypatch.setattr(policies.time, "monotonic", lambda: clock[0])
    policies.clear_cache()
    with frozen(T0):
        assert policies.effective_confidence(fact, T0) == pytest.approx(2**-0.5)
        DecayPolicy.objects.filter(pk=policy.pk).update(half_life_seconds=DAY)
        assert policies.effective_confidence(fact, T0) == pytest.approx(2**-0.5)
        clock[0] += policies.CACHE_S + 0.1
        assert policies.effective_confidence(fact, T0) == pytest.approx(0.5)


def test_load_enabled_is_never_stale():
    assert policies.enabled_policies("default") == []
    policy = make("memory:", ttl_seconds=1)
    assert policies.load_enabled("default") == [policy]
