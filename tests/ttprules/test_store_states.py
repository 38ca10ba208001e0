"""Rule states (WIRE.md §8.2): set, clear, validation, expiry, history, events, audit, the revision cache."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from stigmem import events
from ttprules import store
from ttprules.models import Rule, RuleState, RuleStateChange
from ttprules.store import (
    EXPIRY_ACTOR,
    RuleIndexCache,
    RuleNotFound,
    StateInvalid,
    clear_state,
    current_revision,
    effective_state,
    expire_states,
    set_state,
    sync_directory,
)

from .store_helpers import copy_pack, snapshot, state_audits, state_events

pytestmark = pytest.mark.django_db

OPERATOR = "cli:alice"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    directory = copy_pack(tmp_path / "rules", "R0001", "R0002", "R0003")
    sync_directory(directory)
    return directory


def later(seconds: float) -> datetime:
    return timezone.now() + timedelta(seconds=seconds)


def history(rule_id: str) -> list[tuple]:
    return list(
        RuleStateChange.objects.filter(rule_id=rule_id)
        .order_by("id")
        .values_list("from_state", "to_state", "confidence_max", "cause", "set_by", "reason")
    )


def test_a_state_round_trip_with_history_events_and_audit(rules: Path):
    assert effective_state("R0001") == ("enabled", None)
    start = current_revision()

    row = set_state("R0001", "disabled", reason="noisy on build hosts", set_by=OPERATOR)
    assert (row.rule_id, row.state, row.confidence_max, row.expires_at) == ("R0001", "disabled", None, None)
    assert effective_state("R0001") == ("disabled", None)
    assert current_revision() == start + 1
    assert history("R0001") == [("enabled", "disabled", None, "operator", OPERATOR, "noisy on build hosts")]
    [event] = state_events("R0001")
    assert event.tenant == "default"
    assert event.payload == {
        "rule_id": "R0001",
        "state": "disabled",
        "previous_state": "enabled",
        "confidence_max": None,
        "expires_at": None,
        "set_by": OPERATOR,
        "set_at": row.set_at.isoformat(),
        "reason": "noisy on build hosts",
        "cause": "operator",
    }
    [entry] = state_audits()
    assert (entry.tenant, entry.actor, entry.target, entry.detail) == ("default", OPERATOR, "R0001", event.payload)

    until = later(3600)
    row = set_state("R0001", "clipped", confidence_max=0.5, expires_at=until, set_by=OPERATOR)
    assert effective_state("R0001") == ("clipped", 0.5)
    assert row.expires_at == until and RuleState.objects.get(rule_id="R0001").expires_at == until
    assert state_events("R0001")[-1].payload["expires_at"] == until.isoformat()

    set_state("R0001", "shadow", set_by=OPERATOR)
    clear_state("R0001", reason="fixed", set_by=OPERATOR)
    assert effective_state("R0001") == ("enabled", None)
    assert [(h[0], h[1], h[2]) for h in history("R0001")] == [
        ("enabled", "disabled", None),
        ("disabled", "clipped", 0.5),
        ("clipped", "shadow", None),
        ("shadow", "enabled", None),
    ]
    assert len(state_events("R0001")) == len(state_audits()) == 4
    assert current_revision() == start + 4
    # The stored state row is kept (enabled): who enabled it, when and why.
    assert RuleState.objects.filter(rule_id="R0001").values_list("state", "reason").get() == ("enabled", "fixed")


def test_an_invalid_rule_may_be_given_a_state(rules: Path):
    (rules / "R0002.yaml").write_text("rule_id: R0002\n")
    sync_directory(rules)
    assert not Rule.objects.get(rule_id="R0002").valid
    set_state("R0002", "disabled", set_by=OPERATOR)
    assert effective_state("R0002") == ("disabled", None)


def test_a_state_outlives_its_file_and_applies_when_it_comes_back(rules: Path):
    set_state("R0003", "disabled", set_by=OPERATOR)
    text = (rules / "R0003.yaml").read_text()
    (rules / "R0003.yaml").unlink()
    assert sync_directory(rules).removed == ["R0003"]
    assert effective_state("R0003") == ("disabled", None)
    # Not settable without its file ...
    with pytest.raises(RuleNotFound):
        set_state("R0003", "shadow", set_by=OPERATOR)
    (rules / "R0003.yaml").write_text(text)
    assert sync_directory(rules).created == ["R0003"]
    assert effective_state("R0003") == ("disabled", None)


def test_a_leftover_state_of_a_removed_rule_can_be_cleared(rules: Path):
    set_state("R0003", "disabled", set_by=OPERATOR)
    (rules / "R0003.yaml").unlink()
    sync_directory(rules)
    clear_state("R0003", reason="rule retired", set_by=OPERATOR)
    assert effective_state("R0003") == ("enabled", None)
    assert len(state_events("R0003")) == 2


NAIVE = datetime(2099, 1, 1)  # no time zone: the point of the case


@pytest.mark.parametrize(
    ("state", "options", "field", "message"),
    [
        ("paused", {}, "state", "state must be one of enabled, disabled, clipped, shadow, got 'paused'"),
        ("", {}, "state", "state must be one of"),
        ("clipped", {}, "confidence_max", "confidence_max is required for the clipped state"),
        ("clipped", {"confidence_max": 0}, "confidence_max", "greater than 0 and at most 1, got 0"),
        ("clipped", {"confidence_max": -0.1}, "confidence_max", "greater than 0 and at most 1"),
        ("clipped", {"confidence_max": 1.01}, "confidence_max", "greater than 0 and at most 1, got 1.01"),
        ("clipped", {"confidence_max": math.nan}, "confidence_max", "greater than 0 and at most 1"),
        ("clipped", {"confidence_max": True}, "confidence_max", "greater than 0 and at most 1"),
        ("clipped", {"confidence_max": "0.5"}, "confidence_max", "greater than 0 and at most 1"),
        ("disabled", {"confidence_max": 0.5}, "confidence_max", "applies to the clipped state only, not to disabled"),
        ("shadow", {"confidence_max": 0.5}, "confidence_max", "applies to the clipped state only"),
        ("disabled", {"expires_at": "past"}, "expires_at", "expires_at must be in the future"),
        ("disabled", {"expires_at": "now"}, "expires_at", "expires_at must be in the future"),
        ("disabled", {"expires_at": NAIVE}, "expires_at", "expires_at must carry a time zone"),
        ("disabled", {"expires_at": "2099-01-01T00:00:00Z"}, "expires_at", "expires_at must be a datetime, got str"),
        ("enabled", {"expires_at": "future"}, "expires_at", "does not apply to enabled"),
        ("disabled", {"reason": "x" * 2001}, "reason", "reason must be at most 2000 characters"),
        ("disabled", {"reason": "a\x00b"}, "reason", "reason must not contain NUL characters"),
        ("disabled", {"set_by": " "}, "set_by", "set_by must name who sets the state"),
    ],
)
def test_bad_state_input_is_refused_and_nothing_is_written(rules: Path, state, options, field, message):
    set_state("R0001", "disabled", set_by=OPERATOR)
    before = snapshot()
    moments = {"past": later(-1), "now": timezone.now(), "future": later(3600)}
    if options.get("expires_at") in moments:
        options = {**options, "expires_at": moments[options["expires_at"]]}
    options = {"set_by": OPERATOR, **options}
    for rule_id in ("R0001", "R0002"):  # with and without a stored state
        with pytest.raises(StateInvalid) as raised:
            set_state(rule_id, state, **options)
        assert list(raised.value.errors) == [field]
        assert message in raised.value.errors[field]
        assert isinstance(raised.value, ValueError) and message in str(raised.value)
    assert snapshot() == before


def test_every_bad_field_is_named_at_once(rules: Path):
    with pytest.raises(StateInvalid) as raised:
        set_state("R0001", "clipped", confidence_max=2, expires_at=later(-5), reason=None, set_by="")
    assert set(raised.value.errors) == {"confidence_max", "expires_at", "reason", "set_by"}


@pytest.mark.parametrize("rule_id", ["R9999", "r0001", "R0001.yaml", "R.1", "", "R" * 65, None])
def test_an_unknown_rule_is_not_found_and_nothing_is_written(rules: Path, rule_id):
    before = snapshot()
    for call in (
        lambda: set_state(rule_id, "disabled", set_by=OPERATOR),
        lambda: clear_state(rule_id, set_by=OPERATOR),
    ):
        with pytest.raises(RuleNotFound):
            call()
    assert snapshot() == before


def test_a_failing_history_write_raises_and_leaves_nothing_behind(rules: Path, monkeypatch):
    set_state("R0001", "shadow", set_by=OPERATOR)
    before = snapshot()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(RuleStateChange.objects, "create", broken)
    for rule_id in ("R0001", "R0002"):  # an update of a stored state, and a first state
        with pytest.raises(RuntimeError, match="disk full"):
            set_state(rule_id, "disabled", set_by=OPERATOR)
    assert snapshot() == before


def test_a_failing_event_write_raises_and_leaves_nothing_behind(rules: Path, monkeypatch):
    before = snapshot()

    def broken(*args, **kwargs):
        raise RuntimeError("clock unavailable")

    monkeypatch.setattr(events, "publish", broken)
    with pytest.raises(RuntimeError, match="clock unavailable"):
        set_state("R0001", "disabled", set_by=OPERATOR)
    assert snapshot() == before


# --- expiry --------------------------------------------------------------------------------------


def test_an_expired_state_reverts_exactly_once_with_one_event(rules: Path):
    until = later(3600)
    set_state("R0001", "clipped", confidence_max=0.4, expires_at=until, reason="trial", set_by=OPERATOR)
    set_state("R0002", "disabled", expires_at=later(7200), set_by=OPERATOR)
    set_state("R0003", "shadow", set_by=OPERATOR)  # no expiry
    revision = current_revision()

    assert expire_states(now=until - timedelta(seconds=1)) == 0  # not due yet
    assert current_revision() == revision

    assert expire_states(now=until) == 1  # due at expires_at itself
    assert expire_states(now=until) == 0
    assert expire_states(now=until + timedelta(seconds=30)) == 0
    assert current_revision() == revision + 1
    assert effective_state("R0001") == ("enabled", None)
    assert effective_state("R0002") == ("disabled", None)
    assert effective_state("R0003") == ("shadow", None)

    row = RuleState.objects.get(rule_id="R0001")
    assert (row.state, row.confidence_max, row.expires_at, row.set_by, row.reason) == (
        "enabled",
        None,
        None,
        EXPIRY_ACTOR,
        "expired",
    )
    assert history("R0001")[-1] == ("clipped", "enabled", None, "expiry", EXPIRY_ACTOR, "expired")
    assert RuleStateChange.objects.filter(cause="expiry").count() == 1
    expiry_events = [e for e in state_events("R0001") if e.payload["cause"] == "expiry"]
    assert len(expiry_events) == 1
    assert expiry_events[0].payload | {"set_at": None} == {
        "rule_id": "R0001",
        "state": "enabled",
        "previous_state": "clipped",
        "confidence_max": None,
        "expires_at": None,
        "set_by": EXPIRY_ACTOR,
        "set_at": None,
        "reason": "expired",
        "cause": "expiry",
    }
    assert [a.actor for a in state_audits()][-1] == EXPIRY_ACTOR and len(state_audits()) == 4


def test_several_due_states_revert_in_one_sweep_with_one_bump(rules: Path):
    for rule_id in ("R0001", "R0002", "R0003"):
        set_state(rule_id, "disabled", expires_at=later(60), set_by=OPERATOR)
    revision = current_revision()
    assert expire_states(now=later(120)) == 3
    assert current_revision() == revision + 1
    assert RuleStateChange.objects.filter(cause="expiry").count() == len(state_events()) - 3 == 3


def test_the_revert_is_a_conditional_update_a_second_sweep_cannot_repeat(rules: Path):
    # What two concurrent sweeps do: both read the due row, both UPDATE it; only one changes it.
    set_state("R0001", "disabled", expires_at=later(60), set_by=OPERATOR)
    stale = RuleState.objects.get(rule_id="R0001")
    now = later(120)
    assert store._revert(stale, now, timezone.now()) is True
    assert store._revert(stale, now, timezone.now()) is False
    # Nor does a stale read revert a state the operator set again meanwhile.
    set_state("R0001", "shadow", expires_at=later(60), set_by=OPERATOR)
    assert store._revert(stale, now, timezone.now()) is False
    assert effective_state("R0001") == ("shadow", None)


def test_a_failing_expiry_raises_and_leaves_the_state(rules: Path, monkeypatch):
    set_state("R0001", "disabled", expires_at=later(60), set_by=OPERATOR)
    before = snapshot()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(RuleStateChange.objects, "create", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        expire_states(now=later(120))
    assert snapshot() == before
    monkeypatch.undo()
    assert expire_states(now=later(120)) == 1


# --- the revision and the per-process cache ----------------------------------------------------------


def test_the_cache_rebuilds_only_when_the_revision_moves(rules: Path):
    builds: list[int] = []

    def build() -> int:
        builds.append(current_revision())
        return len(builds)

    cache = RuleIndexCache(build)
    assert cache.revision is None
    assert cache.get() == cache.get() == 1
    assert cache.revision == current_revision()

    sync_directory(rules)  # unchanged: no new revision
    assert cache.get() == 1

    set_state("R0001", "disabled", set_by=OPERATOR)
    assert cache.get() == cache.get() == 2

    (rules / "R0002.yaml").unlink()
    sync_directory(rules)
    assert cache.get() == 3

    assert expire_states() == 0  # nothing due: no change
    assert cache.get() == 3

    cache.clear()
    assert cache.get() == 4
    assert builds == sorted(builds) and len(set(builds)) == 3  # the last two built at the same revision


def test_current_revision_starts_at_zero():
    assert current_revision() == 0
