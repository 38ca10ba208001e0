"""The fact log under concurrent writers, on a SQLite file (DESIGN.md §3).

The same workload and checks as the log test in ``test_concurrency_pg.py``: writer threads
(single asserts and batches) while a reader pages the log by ``seq``; the reader must see every
fact exactly once in strictly increasing ``seq``, ``seq`` must be 1..N without gaps, and HLC
values must increase with ``seq``.

pytest-django's SQLite test database lives in memory, where threads cannot each open their own
connection to it, so the workload runs in a child process with the node's own settings on a
fresh database file (``STIGMEM_DB_PATH``), migrated there. That also exercises the node's SQLite
backend (IMMEDIATE transactions queued on the writer lock file) the way a deployment uses it.
"""

from __future__ import annotations

from tests.child import run_child
from tests.core.fact_log_workload import expected_new_facts


def test_log_reader_sees_every_fact_once_in_seq_order_on_a_sqlite_file(tmp_path):
    run = run_child("tests.core.fact_log_workload", str(tmp_path), timeout=900)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    expected = expected_new_facts()
    assert run.stdout.strip() == f"ok: {expected} facts, seq 1..{expected}", run.stdout
    assert (tmp_path / "stigmem.db").exists()
