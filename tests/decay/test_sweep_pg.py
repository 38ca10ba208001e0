"""The sweep under real concurrency (PostgreSQL): the tenant lock, and writers between chunks."""

from __future__ import annotations

import threading

import pytest
from django.test import override_settings

from decay.models import SweepLock
from decay.sweep import SweepBusy, SweepRequest, run_sweep
from stigmem.models import Fact, NodeClock
from tests.decay.sweep_helpers import DAY, HOUR, ago, body, expired_ids, expiry_events, write
from tests.threads import in_thread

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

REQUEST = SweepRequest(tenant="default", ttl_seconds=HOUR)


@pytest.fixture(autouse=True)
def node_clock():
    # A transactional test starts from emptied tables, the node clock's row included.
    NodeClock.objects.get_or_create(pk=1)


@override_settings(STIGMEM_DECAY_CHUNK=1)
def test_two_concurrent_sweeps_of_one_tenant_one_runs_the_other_is_busy():
    facts = write(ago(DAY), *[body(f"e{i}") for i in range(3)])
    start = threading.Barrier(2)
    loser_finished = threading.Event()
    outcomes: dict[str, object] = {}

    def sweeper(name: str):
        def run():
            start.wait(10)
            try:
                # The winner stays inside its sweep until the loser has had its answer.
                outcomes[name] = run_sweep(REQUEST, actor=name, progress=lambda _: loser_finished.wait(10))
            except SweepBusy as busy:
                outcomes[name] = busy
                loser_finished.set()

        return run

    threads = [in_thread(sweeper("a")), in_thread(sweeper("b"))]
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    busy = [o for o in outcomes.values() if isinstance(o, SweepBusy)]
    done = [o for o in outcomes.values() if not isinstance(o, SweepBusy)]
    assert len(busy) == 1 and len(done) == 1
    assert done[0].decayed == 3
    assert expired_ids() == {f.id for f in facts}
    assert len(expiry_events()) == 3
    assert not SweepLock.objects.exists()


@override_settings(STIGMEM_DECAY_CHUNK=1)
def test_a_writer_completes_between_chunks_of_a_sweep():
    write(ago(DAY), *[body(f"e{i}") for i in range(3)])
    order: list[str] = []

    def between_chunks(fraction: float):
        order.append("chunk")
        if len(order) == 1:
            # The sweep is still running (it holds the tenant lock) but no chunk transaction:
            # an assert from another connection goes through now, not after the sweep.
            assert SweepLock.objects.filter(tenant="default").exists()
            writer = in_thread(lambda: write(ago(0), body("during")) and order.append("write"))
            writer.join(30)
            assert not writer.is_alive()

    result = run_sweep(REQUEST, actor="test", progress=between_chunks)
    assert order[:3] == ["chunk", "write", "chunk"]
    assert result.decayed == 3
    during = Fact.objects.get(entity="stigmem://test/during")
    assert during.expired_at is None  # written after the sweep began: not part of it
