"""Log consumers with durable cursors, and the coalesced on-commit kick (DESIGN.md §3)."""

from __future__ import annotations

import pydoc
import threading

import django_q.tasks
import pytest
from django.db import transaction
from django.db.models import Q
from django_q.models import OrmQ

from stigmem import events, logtail
from stigmem.models import ConsumerCursor, Event, Fact
from tests.threads import wait_until

NAME = "test-consumer"
FACTS = ConsumerCursor.Log.FACTS
EVENTS = ConsumerCursor.Log.EVENTS


def fact_body(n: int) -> dict:
    return {
        "entity": f"stigmem://test/user/u{n}",
        "relation": "memory:n",
        "value": {"type": "number", "v": n},
        "source": "stigmem://test/agent/writer",
    }


def write_facts(client, count: int, start: int = 0) -> list[int]:
    response = client.post("/v1/facts/batch", {"facts": [fact_body(start + n) for n in range(count)]}, format="json")
    assert response.status_code == 200
    assert response.json()["accepted"] == count
    return [Fact.objects.get(id=r["fact"]["id"]).seq for r in response.json()["results"]]


class Recorder:
    """A log handler that records what it was given, and can fail or write rows of its own."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_next = 0
        self.publish = False

    def __call__(self, rows) -> None:
        seqs = [row.seq for row in rows]
        if self.publish:
            for row in rows:
                events.publish("default", events.TTP_TAGGED, {"handled": row.seq})
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("consumer crashed")
        self.batches.append(seqs)

    @property
    def seen(self) -> list[int]:
        return [seq for batch in self.batches for seq in batch]


@pytest.fixture
def only_test_consumers():
    """Run with no consumer but the test's own; restore the app's consumers afterwards."""
    saved = logtail.consumers()
    for consumer in saved:
        logtail.unregister(consumer.name, consumer.log)
    yield
    for consumer in logtail.consumers():
        logtail.unregister(consumer.name, consumer.log)
    for consumer in saved:
        logtail.register(
            consumer.name,
            consumer.log,
            consumer.handler,
            consumer.batch_size,
            consumer.only,
            consumer.prepare,
            consumer.wanted,
        )


@pytest.fixture
def recorder(only_test_consumers, db):
    handler = Recorder()
    logtail.register(NAME, FACTS, handler, batch_size=3)
    yield handler
    logtail.unregister(NAME, FACTS)


def registered(name: str = NAME, log: str = FACTS) -> logtail.Consumer:
    return next(c for c in logtail.consumers() if c.name == name and c.log == log)


def cursor_position(name: str = NAME, log: str = FACTS) -> int:
    row = ConsumerCursor.objects.filter(consumer=name, log=log).first()
    return row.position if row else 0


# --- registration -------------------------------------------------------------------------------


def test_register_and_unregister(only_test_consumers):
    handler = Recorder()
    logtail.register(NAME, FACTS, handler, batch_size=7)
    consumer = registered()
    assert (consumer.name, consumer.log, consumer.handler, consumer.batch_size) == (NAME, "facts", handler, 7)
    logtail.register(NAME, EVENTS, handler)
    assert {(c.name, c.log) for c in logtail.consumers()} == {(NAME, "facts"), (NAME, "events")}
    logtail.unregister(NAME, FACTS)
    logtail.unregister(NAME, EVENTS)
    logtail.unregister(NAME, EVENTS)  # unregistering twice is harmless
    assert logtail.consumers() == []


def test_register_rejects_an_unknown_log(only_test_consumers):
    with pytest.raises(ValueError, match="unknown log"):
        logtail.register(NAME, "tweets", Recorder())
    assert logtail.consumers() == []


# --- delivery -----------------------------------------------------------------------------------


def test_each_fact_once_in_seq_order_across_batches(client, recorder):
    seqs = write_facts(client, 8)
    consumer = registered()
    sizes = []
    while handled := logtail.run_batch(consumer):
        sizes.append(handled)
    assert sizes == [3, 3, 2]
    assert recorder.batches == [seqs[0:3], seqs[3:6], seqs[6:8]]
    assert recorder.seen == sorted(seqs)
    assert cursor_position() == seqs[-1]
    assert logtail.run_batch(consumer) == 0
    assert len(recorder.batches) == 3

    more = write_facts(client, 2, start=100)
    assert logtail.run_batch(consumer) == 2
    assert recorder.batches[-1] == more
    assert recorder.seen == sorted(seqs + more)
    assert cursor_position() == more[-1]


def test_prepare_runs_before_the_transaction_and_the_handler_gets_its_result(client, only_test_consumers):
    from django.db import connection

    seen: dict[str, object] = {}

    def prepare(rows):
        seen["prepare_depth"] = len(connection.atomic_blocks)
        return [row.seq * 10 for row in rows]

    def handler(work):
        seen["handler_depth"] = len(connection.atomic_blocks)
        seen["work"] = work

    logtail.register(NAME, FACTS, handler, batch_size=5, prepare=prepare)
    seqs = write_facts(client, 2)
    assert logtail.run_batch(registered()) == 2
    # The test itself runs in a transaction: the handler's is one level deeper, prepare's is not there.
    assert seen["handler_depth"] == seen["prepare_depth"] + 1
    assert seen["work"] == [s * 10 for s in seqs]
    assert cursor_position() == seqs[-1]
    logtail.unregister(NAME, FACTS)


def test_a_batch_is_a_background_write(client, only_test_consumers):
    # On SQLite a consumer's batch does not join the writer queue a decay sweep makes room for.
    from django.db import connection

    seen = []
    logtail.register(NAME, FACTS, lambda rows: seen.append(getattr(connection, "joins_writer_queue", None)))
    write_facts(client, 1)
    assert logtail.run_batch(registered()) == 1
    expected = False if connection.vendor == "sqlite" else None
    assert seen == [expected]
    assert getattr(connection, "joins_writer_queue", None) is (True if connection.vendor == "sqlite" else None)
    logtail.unregister(NAME, FACTS)


def test_run_consumers_drains_every_batch(client, recorder):
    seqs = write_facts(client, 10)
    assert logtail.run_consumers() == 10
    assert recorder.seen == seqs
    assert [len(b) for b in recorder.batches] == [3, 3, 3, 1]
    assert logtail.run_consumers() == 0
    assert recorder.seen == seqs


def test_a_crash_does_not_advance_the_cursor(client, recorder):
    seqs = write_facts(client, 5)
    consumer = registered()
    assert logtail.run_batch(consumer) == 3
    assert cursor_position() == seqs[2]

    recorder.fail_next = 1
    with pytest.raises(RuntimeError, match="consumer crashed"):
        logtail.run_batch(consumer)
    assert cursor_position() == seqs[2]
    assert recorder.seen == seqs[:3]

    # The next run re-delivers exactly the rows that failed.
    assert logtail.run_batch(consumer) == 2
    assert recorder.batches == [seqs[:3], seqs[3:]]
    assert cursor_position() == seqs[-1]


def test_run_consumers_survives_a_failing_consumer(client, recorder):
    other = Recorder()
    logtail.register("test-other", FACTS, other, batch_size=100)
    try:
        seqs = write_facts(client, 4)
        recorder.fail_next = 1
        handled = logtail.run_consumers()
        # The failing consumer stopped at its cursor; the other one still ran.
        assert recorder.seen == []
        assert cursor_position() == 0
        assert other.seen == seqs
        assert handled == 4
        assert logtail.run_consumers() == 4
        assert recorder.seen == seqs
        assert other.seen == seqs
    finally:
        logtail.unregister("test-other", FACTS)


def test_rows_written_by_the_handler_commit_with_the_cursor(client, recorder):
    seqs = write_facts(client, 3)
    consumer = registered()
    recorder.publish = True

    recorder.fail_next = 1
    with pytest.raises(RuntimeError):
        logtail.run_batch(consumer)
    # The handler's writes rolled back together with the batch.
    assert not Event.objects.filter(topic=events.TTP_TAGGED).exists()
    assert cursor_position() == 0

    assert logtail.run_batch(consumer) == 3
    handled = sorted(Event.objects.filter(topic=events.TTP_TAGGED).values_list("payload__handled", flat=True))
    assert handled == seqs
    assert cursor_position() == seqs[-1]


def test_consumers_have_independent_cursors(client, recorder):
    late = Recorder()
    seqs = write_facts(client, 4)
    logtail.run_consumers()
    assert recorder.seen == seqs
    logtail.register("test-late", FACTS, late, batch_size=50)
    try:
        assert logtail.run_batch(registered("test-late")) == 4
        assert late.seen == seqs
        assert cursor_position("test-late") == seqs[-1]
    finally:
        logtail.unregister("test-late", FACTS)


def test_events_log_consumer(only_test_consumers, client):
    handler = Recorder()
    logtail.register(NAME, EVENTS, handler, batch_size=2)
    try:
        published = [events.publish("default", events.FACT_EXPIRED, {"n": n}).seq for n in range(3)]
        write_facts(client, 2)  # facts are not events
        consumer = registered(NAME, EVENTS)
        while logtail.run_batch(consumer):
            pass
        assert handler.batches == [published[:2], published[2:]]
        assert cursor_position(NAME, EVENTS) == published[-1]
        assert cursor_position(NAME, FACTS) == 0
    finally:
        logtail.unregister(NAME, EVENTS)


def test_a_consumer_is_handed_only_the_rows_it_wants_and_passes_the_others(only_test_consumers, client):
    handler = Recorder()
    wanted_topic = [events.TTP_TAGGED]
    logtail.register(NAME, EVENTS, handler, batch_size=2, wanted=lambda: Q(topic__in=wanted_topic))
    try:
        topics = [events.FACT_EXPIRED, events.TTP_TAGGED, events.FACT_EXPIRED, events.TTP_TAGGED, events.TTP_TAGGED]
        published = [events.publish("default", topic, {"n": n}).seq for n, topic in enumerate(topics)]
        trailing = [events.publish("default", events.FACT_EXPIRED, {"n": n}).seq for n in range(3)]
        consumer = registered(NAME, EVENTS)

        assert logtail.run_batch(consumer) == 2  # a full batch of wanted rows: the cursor stops at its last
        assert cursor_position(NAME, EVENTS) == published[3]
        assert logtail.run_batch(consumer) == 1  # the last wanted row, then past the unwanted tail
        assert cursor_position(NAME, EVENTS) == trailing[-1]
        assert handler.batches == [[published[1], published[3]], [published[4]]]
        assert logtail.run_batch(consumer) == 0  # caught up: nothing written

        # The filter is asked again for every batch: rows it wants now are handed over.
        wanted_topic.append(events.FACT_EXPIRED)
        later = events.publish("default", events.FACT_EXPIRED, {"n": 9}).seq
        assert logtail.run_batch(consumer) == 1
        assert handler.batches[-1] == [later]
    finally:
        logtail.unregister(NAME, EVENTS)


def test_a_consumer_wanting_nothing_moves_its_cursor_to_the_log_end_without_its_handler(only_test_consumers, client):
    handler = Recorder()
    logtail.register(NAME, FACTS, handler, batch_size=2, wanted=lambda: Q(pk__in=[]))
    try:
        seqs = write_facts(client, 5)
        assert logtail.run_batch(registered()) == 0
        assert cursor_position() == seqs[-1]
        assert handler.batches == []
    finally:
        logtail.unregister(NAME, FACTS)


# --- the on-commit kick -------------------------------------------------------------------------


class EnqueueRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def __call__(self, *args, **kwargs):
        with self._changed:
            self.calls.append((args, kwargs))
            self._changed.notify_all()
        return "task-id"

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.calls) >= count, timeout=timeout)


@pytest.fixture
def fresh_kicks(monkeypatch):
    """A kick throttle with no history, so earlier tests cannot leave a window open."""
    monkeypatch.setattr(logtail, "_throttle", logtail._KickThrottle())


# The module's own enqueue, read at import: tests/conftest.py replaces it with a no-op in every test.
REAL_ENQUEUE = logtail._enqueue


@pytest.fixture
def enqueued(monkeypatch, fresh_kicks):
    monkeypatch.setattr(logtail, "_enqueue", REAL_ENQUEUE)
    recorder = EnqueueRecorder()
    monkeypatch.setattr(django_q.tasks, "async_task", recorder)
    # A window long enough that a burst of commits certainly falls inside it.
    monkeypatch.setattr(logtail, "KICK_WINDOW_S", 1.0)
    return recorder


def test_a_burst_of_commits_enqueues_one_kick_then_a_trailing_one(
    client, recorder, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        for n in range(5):
            assert client.post("/v1/facts", fact_body(n), format="json").status_code == 201
        assert enqueued.calls == []  # nothing before commit
    assert len(callbacks) >= 5
    assert enqueued.wait_for(1)  # enqueued from a thread of its own, not the request's
    assert len(enqueued.calls) == 1
    args, kwargs = enqueued.calls[0]
    assert args == (logtail.KICK_TASK,)
    assert kwargs["group"] == "logtail"
    assert kwargs["sync"] is False

    # After the window one trailing kick picks up the rest of the burst; only one.
    assert enqueued.wait_for(2)
    assert len(enqueued.calls) == 2
    assert enqueued.calls[1][0] == (logtail.KICK_TASK,)

    # The task the kick names runs the consumers.
    task = pydoc.locate(enqueued.calls[0][0][0])
    assert task is logtail.run_consumers
    assert task() == 5
    assert len(recorder.seen) == 5


def test_a_single_commit_enqueues_one_kick_and_no_trailing_one(
    client, recorder, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/v1/facts", fact_body(1), format="json")
    assert enqueued.wait_for(1)
    assert len(enqueued.calls) == 1
    # A lone commit schedules no trailing kick.
    assert not enqueued.wait_for(2, timeout=1.5)
    assert len(enqueued.calls) == 1


def test_no_kick_without_consumers(client, only_test_consumers, enqueued, django_capture_on_commit_callbacks):
    assert logtail.consumers() == []
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        for n in range(3):
            assert client.post("/v1/facts", fact_body(n), format="json").status_code == 201
        events.publish("default", events.FACT_EXPIRED, {})
    assert len(callbacks) >= 4  # the kicks ran ...
    assert enqueued.calls == []  # ... and found nobody to wake


def test_no_kick_for_a_rolled_back_write(recorder, enqueued, django_capture_on_commit_callbacks):
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
    ):
        events.publish("default", events.FACT_EXPIRED, {})
        1 / 0  # noqa: B018
    assert callbacks == []
    assert enqueued.calls == []
    assert not Event.objects.exists()


def test_the_kick_lands_in_the_orm_queue(db):
    # What the kick's thread runs (called here, in the test's transaction, to see its row).
    before = OrmQ.objects.count()
    REAL_ENQUEUE()
    queued = list(OrmQ.objects.all())
    assert len(queued) == before + 1
    task = queued[-1].task
    assert task["func"] == logtail.KICK_TASK
    assert task["group"] == "logtail"
    # django-q2 then keeps no result row for a kick that succeeds (one that fails is still saved).
    assert task["save"] is False


def test_a_broker_failure_never_fails_the_write(
    client, recorder, fresh_kicks, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(logtail, "_enqueue", REAL_ENQUEUE)
    attempts = []

    def broken(*args, **kwargs):
        attempts.append(args)
        raise ConnectionError("broker down")

    monkeypatch.setattr(django_q.tasks, "async_task", broken)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post("/v1/facts", fact_body(1), format="json")
    assert len(callbacks) >= 1
    assert wait_until(lambda: attempts)
    assert attempts == [(logtail.KICK_TASK,)]
    assert response.status_code == 201
    assert Fact.objects.filter(id=response.json()["id"]).exists()
