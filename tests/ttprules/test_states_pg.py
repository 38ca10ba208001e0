"""Rule-state expiry under real concurrency (PostgreSQL): two sweeps at once revert a state once."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from stigmem.models import NodeClock
from ttprules import store
from ttprules.models import Rule, RuleRevision, RuleState, RuleStateChange
from ttprules.store import current_revision, expire_states, set_state

from .store_helpers import state_audits, state_events

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def node_clock():
    # A transactional test starts from emptied tables, the node clock's row included.
    NodeClock.objects.get_or_create(pk=1)


@pytest.fixture
def due_state() -> None:
    now = timezone.now()
    Rule.objects.create(
        rule_id="R0001",
        file_name="R0001.yaml",
        content_sha256="0" * 64,
        parser_sha256="0" * 64,
        source="",
        valid=False,
        loaded_at=now,
        updated_at=now,
    )
    set_state("R0001", "disabled", expires_at=now + timedelta(seconds=30), set_by="cli:test")


def sweep_concurrently(sweeps: int = 2) -> list[object]:
    """Run ``expire_states`` (cut-off one minute ahead) in threads that start together."""
    start = threading.Barrier(sweeps)
    outcomes: list[object] = []
    cutoff = timezone.now() + timedelta(minutes=1)

    def run() -> None:
        try:
            start.wait(10)
            outcomes.append(expire_states(now=cutoff))
        except Exception as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(sweeps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def assert_reverted_once(outcomes: list[object], revision_before: int) -> None:
    assert sorted(outcomes) == [0, 1], outcomes  # type: ignore[type-var]
    assert RuleState.objects.get(rule_id="R0001").state == "enabled"
    assert RuleStateChange.objects.filter(rule_id="R0001", cause="expiry").count() == 1
    assert [e.payload["cause"] for e in state_events("R0001")] == ["operator", "expiry"]
    assert len(state_audits()) == 2
    assert current_revision() == revision_before + 1


def test_two_concurrent_sweeps_revert_a_state_once(due_state):
    revision = current_revision()
    assert_reverted_once(sweep_concurrently(), revision)


def test_the_conditional_update_alone_reverts_once(due_state, monkeypatch):
    # Without the revision row's lock both sweeps read the due row before either updates it: the
    # second UPDATE waits for the first's row lock, then finds the row no longer due.
    monkeypatch.setattr(store, "_locked_revision", lambda: RuleRevision.objects.get(pk=1))
    both_read = threading.Barrier(2)
    real_revert = store._revert

    def revert_after_both_read(row, now, reverted_at):
        both_read.wait(10)
        return real_revert(row, now, reverted_at)

    monkeypatch.setattr(store, "_revert", revert_after_both_read)
    revision = current_revision()
    assert_reverted_once(sweep_concurrently(), revision)
