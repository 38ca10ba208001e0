"""Bulk work can see writers waiting for the node clock (PostgreSQL: a lock on the clock's row)."""

from __future__ import annotations

import threading

import pytest

from stigmem.clock import clock_transaction, let_waiting_writers_go, writers_waiting
from stigmem.models import NodeClock
from tests.threads import in_thread, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def node_clock():
    # A transactional test starts from emptied tables, the node clock's row included.
    NodeClock.objects.get_or_create(pk=1)


def test_a_writer_blocked_on_the_clock_is_seen_and_goes_first():
    got_clock = threading.Event()
    with clock_transaction():
        assert not writers_waiting()
        writer = in_thread(lambda: _take_clock(got_clock))
        # The writer queues for the clock row behind this transaction.
        assert wait_until(writers_waiting)
        assert not got_clock.is_set()
    # Committed: the writer gets the clock, and once it has, nobody waits any more.
    let_waiting_writers_go(10.0)
    assert not writers_waiting()
    writer.join(10)
    assert got_clock.is_set()


def _take_clock(got_clock: threading.Event) -> None:
    with clock_transaction() as lease:
        lease.tick()
        got_clock.set()
