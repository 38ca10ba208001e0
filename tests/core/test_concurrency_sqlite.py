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

import os
import subprocess
import sys
from pathlib import Path

from tests.core.fact_log_workload import expected_new_facts

ROOT = Path(__file__).resolve().parents[2]


def test_log_reader_sees_every_fact_once_in_seq_order_on_a_sqlite_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STIGMEM_DB_PATH", "STIGMEM_DATA_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-m", "tests.core.fact_log_workload", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    expected = expected_new_facts()
    assert run.stdout.strip() == f"ok: {expected} facts, seq 1..{expected}", run.stdout
    assert (tmp_path / "stigmem.db").exists()
