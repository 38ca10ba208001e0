"""Child processes with the node's own settings on a fresh SQLite file.

pytest-django's SQLite test database lives in memory, where threads cannot each open their own
connection and the node's writer lock file does not apply, so checks that need a real database
file run as ``python -m <module> <args>`` in a child process (which sets ``STIGMEM_DB_PATH``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STIGMEM_DB_PATH", "STIGMEM_DATA_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
