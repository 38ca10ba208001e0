"""Concurrent writers and fact-log readers (DESIGN.md §3), shared by the concurrency tests.

Used in-process by ``test_concurrency_pg.py`` (PostgreSQL) and, through ``python -m
tests.core.fact_log_workload <dir>``, by ``test_concurrency_sqlite.py`` against a SQLite file
(pytest-django's in-memory SQLite database cannot be shared by threads).

Every thread uses its own database connection and closes it when it ends. The checks raise
``AssertionError`` with a message; this module is not a test module, so plain ``assert`` would
lose pytest's rewriting.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

WRITERS = 6
ASSERTS_PER_WRITER = 150
# Writes in one call: single asserts and batches of several sizes.
CHUNK_SIZES = (1, 1, 7, 1, 12, 1, 3, 25, 1, 2)
TENANT = "default"
# Guards against a hang (a thread stuck on a lock); not a performance expectation.
JOIN_TIMEOUT_S = 600


def writer_bodies(writer: int, count: int = ASSERTS_PER_WRITER) -> list[dict[str, Any]]:
    """The assert bodies of one writer.

    Mostly new facts on the writer's own keys; every 10th contends with the other writers on
    one shared key (different sources, so conflicts and head updates); every 25th re-asserts the
    writer's first fact, which must not take a new ``seq``.
    """
    bodies = []
    for index in range(count):
        if index and index % 25 == 0:
            bodies.append(dict(bodies[0]))
            continue
        shared = index % 10 == 9
        bodies.append(
            {
                "entity": "stigmem://testnode/user/shared" if shared else f"stigmem://testnode/user/w{writer}",
                "relation": "memory:contended" if shared else f"memory:k{index % 7}",
                "value": {"type": "string", "v": f"w{writer}-{index}"} if shared else {"type": "number", "v": index},
                "source": f"stigmem://testnode/agent/writer{writer}",
                "scope": "team",
            }
        )
    return bodies


def chunked(bodies: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    chunks, start, turn = [], 0, 0
    while start < len(bodies):
        size = CHUNK_SIZES[turn % len(CHUNK_SIZES)]
        chunks.append(bodies[start : start + size])
        start += size
        turn += 1
    return chunks


def expected_new_facts(writers: int = WRITERS, count: int = ASSERTS_PER_WRITER) -> int:
    """How many rows the writers create: one per distinct content (CID)."""
    from stigmem.fact_input import parse_fact_body

    cids = {parse_fact_body(body).cid for writer in range(writers) for body in writer_bodies(writer, count)}
    return len(cids)


@dataclass
class Threads:
    """Runs thread bodies, each with its own connection, and collects their failures."""

    errors: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, target: Callable[[], Any]) -> None:
        def run() -> None:
            from django.db import connections

            try:
                target()
            except BaseException:
                self.errors.append(traceback.format_exc())
            finally:
                connections.close_all()

        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
        stuck = [t for t in self._threads if t.is_alive()]
        if stuck:
            raise AssertionError(f"{len(stuck)} thread(s) did not finish within {JOIN_TIMEOUT_S}s (hang guard)")
        if self.errors:
            raise AssertionError("a thread failed:\n" + "\n".join(self.errors))


def start_writers(threads: Threads, go: threading.Barrier, writers: int = WRITERS) -> list[threading.Event]:
    """Start the writer threads; each waits on ``go``, then asserts its facts in chunks."""
    from stigmem.fact_input import parse_fact_body
    from stigmem.facts import assert_facts

    done_events = []
    for writer in range(writers):
        done = threading.Event()
        done_events.append(done)

        def write(writer: int = writer, done: threading.Event = done) -> None:
            try:
                chunks = chunked(writer_bodies(writer))
                go.wait()
                for chunk in chunks:
                    assert_facts(TENANT, [parse_fact_body(body) for body in chunk])
            finally:
                done.set()

        threads.start(write)
    return done_events


def tail_fact_log(writers_done: Iterable[threading.Event], go: threading.Barrier, page: int = 40) -> list[tuple]:
    """Page the fact log by ``seq`` like a log consumer until the writers are done and it is drained.

    Returns every ``(seq, id)`` observed, in the order observed. Raises if a page goes backwards.
    """
    from stigmem.models import Fact

    writers_done = list(writers_done)
    observed: list[tuple] = []
    last = 0
    go.wait()
    while True:
        # Read the flag before the query: an empty page after every writer finished means drained.
        finished = all(done.is_set() for done in writers_done)
        rows = list(Fact.objects.filter(seq__gt=last).order_by("seq").values_list("seq", "id")[:page])
        for seq, _ in rows:
            if seq <= last:
                raise AssertionError(f"log reader saw seq {seq} after {last}")
            last = seq
        observed.extend(rows)
        if not rows and finished:
            return observed
        if not rows:
            time.sleep(0.001)  # nothing new yet: let the writers run


def check_log(observed: list[tuple], start_seq: int, expected_rows: int) -> int:
    """The fact log invariants after the writers finished; returns the number of rows.

    - the table holds exactly the expected rows, with seq ``start_seq+1 .. start_seq+N``, no gaps;
    - the concurrent reader saw every row exactly once, in strictly increasing seq (none skipped,
      none repeated);
    - HLC values increase strictly with seq;
    - the clock row's ``last_fact_seq`` is the last seq handed out.
    """
    from stigmem.models import Fact, NodeClock

    final = list(Fact.objects.order_by("seq").values_list("seq", "id", "hlc"))
    seqs = [seq for seq, _, _ in final]
    if len(final) != expected_rows:
        raise AssertionError(f"expected {expected_rows} fact rows, found {len(final)}")
    if seqs != list(range(start_seq + 1, start_seq + len(final) + 1)):
        missing = sorted(set(range(start_seq + 1, start_seq + len(final) + 1)) - set(seqs))
        raise AssertionError(f"seq values are not contiguous from {start_seq + 1}: missing {missing[:20]}")
    clock_seq = NodeClock.objects.get(pk=1).last_fact_seq
    if clock_seq != seqs[-1]:
        raise AssertionError(f"NodeClock.last_fact_seq is {clock_seq}, last fact seq is {seqs[-1]}")

    observed_ids = [fact_id for _, fact_id in observed]
    if len(set(observed_ids)) != len(observed_ids):
        repeated = len(observed_ids) - len(set(observed_ids))
        raise AssertionError(f"the log reader saw {repeated} fact(s) more than once")
    observed_seqs = [seq for seq, _ in observed]
    if any(b <= a for a, b in pairwise(observed_seqs)):
        raise AssertionError("the log reader's seqs are not strictly increasing")
    final_pairs = [(seq, fact_id) for seq, fact_id, _ in final]
    if observed != final_pairs:
        skipped = sorted(seq for seq, fact_id in set(final_pairs) - set(observed))
        raise AssertionError(
            f"the log reader saw {len(observed)} of {len(final)} facts; skipped seqs {skipped[:20]} "
            "(a transaction with a smaller seq committed after a reader had passed it)"
        )

    check_hlc_follows_seq()
    return len(final)


def check_hlc_follows_seq() -> None:
    """Every fact's HLC is strictly greater than that of the fact before it in seq order."""
    from stigmem.hlc import Hlc
    from stigmem.models import Fact

    rows = list(Fact.objects.order_by("seq").values_list("seq", "hlc"))
    for (_, earlier), (seq, later) in pairwise(rows):
        if not Hlc.parse(later) > Hlc.parse(earlier):
            raise AssertionError(f"HLC does not increase with seq at seq {seq}: {earlier} then {later}")


def run_log_workload() -> dict[str, int]:
    """Writers plus one log reader on the configured database; returns counts. Raises on a violation."""
    from stigmem.models import Fact, NodeClock

    if Fact.objects.exists():
        raise AssertionError("the fact table must be empty before the workload")
    start_seq = NodeClock.objects.get(pk=1).last_fact_seq
    threads = Threads()
    go = threading.Barrier(WRITERS + 1, timeout=JOIN_TIMEOUT_S)
    writers_done = start_writers(threads, go)
    result: dict[str, list] = {}
    threads.start(lambda: result.setdefault("observed", tail_fact_log(writers_done, go)))
    threads.join()
    rows = check_log(result["observed"], start_seq, expected_new_facts())
    return {"rows": rows, "first_seq": start_seq + 1}


def main(data_dir: str) -> int:
    """Run the workload on a fresh SQLite file under ``data_dir`` with the node's own settings."""
    os.environ.pop("DATABASE_URL", None)
    os.environ["STIGMEM_DATA_DIR"] = data_dir
    os.environ["STIGMEM_DB_PATH"] = os.path.join(data_dir, "stigmem.db")
    os.environ["DJANGO_SETTINGS_MODULE"] = "stigmem.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        raise AssertionError(f"expected a SQLite file database, got {connection.vendor} {connection.settings_dict}")
    counts = run_log_workload()
    print(f"ok: {counts['rows']} facts, seq {counts['first_seq']}..{counts['first_seq'] + counts['rows'] - 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
