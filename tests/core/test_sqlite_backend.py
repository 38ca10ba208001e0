"""The node's SQLite backend on a database file: queued writers go first, checkpoints off the lock.

pytest-django's SQLite database lives in memory, where the writer lock file does not apply, so
each check runs in a child process on a fresh database file (``sqlite_backend_workload.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("check", ["yield", "yield-bounded", "checkpoint"])
def test_sqlite_backend_on_a_file(tmp_path, check):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STIGMEM_DB_PATH", "STIGMEM_DATA_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-m", "tests.core.sqlite_backend_workload", str(tmp_path), check],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.stdout.strip().endswith("ok"), run.stdout
