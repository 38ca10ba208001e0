"""The node's SQLite backend on a database file: queued writers go first, checkpoints off the lock.

Each check runs in a child process on a fresh database file (``sqlite_backend_workload.py``).
"""

from __future__ import annotations

import pytest

from tests.child import run_child


@pytest.mark.parametrize("check", ["yield", "yield-bounded", "checkpoint", "background"])
def test_sqlite_backend_on_a_file(tmp_path, check):
    run = run_child("tests.core.sqlite_backend_workload", str(tmp_path), check, timeout=120)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.stdout.strip().endswith("ok"), run.stdout
