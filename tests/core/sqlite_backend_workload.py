"""Child process of ``test_sqlite_backend.py``: the node's SQLite backend on a database file.

``python -m tests.core.sqlite_backend_workload <dir> <check>`` runs one check against a fresh
database file in ``<dir>`` with the node's settings, and prints ``ok`` or raises.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from tests.threads import in_thread


def _setup(directory: Path) -> None:
    os.environ["STIGMEM_DB_PATH"] = str(directory / "backend.db")
    os.environ["STIGMEM_DATA_DIR"] = str(directory)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stigmem.settings")
    import django

    django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")


def _write(value: int) -> None:
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO t (x) VALUES (%s)", [value])


def _hold_lock(release: threading.Event, held: threading.Event) -> None:
    """A writer that keeps its transaction (and the writer lock) open until ``release``."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO t (x) VALUES (0)")
        held.set()
        release.wait(30)


def check_yield_waits_for_queued_writers() -> None:
    from django.db import connection

    release, held, got_lock = threading.Event(), threading.Event(), {}
    holder = in_thread(lambda: _hold_lock(release, held))
    assert held.wait(10)

    def queued_writer() -> None:
        from django.db import connection, transaction

        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("INSERT INTO t (x) VALUES (1)")  # the first statement: the lock is ours
            got_lock["at"] = time.monotonic()

    writer = in_thread(queued_writer)
    time.sleep(0.3)  # the writer is now blocked on the writer lock, queued
    assert "at" not in got_lock
    threading.Timer(0.3, release.set).start()
    connection.yield_to_queued_writers(10.0)
    # The yield returned only after the holder let go, when the queued writer took the lock.
    assert release.is_set()
    writer.join(10)
    holder.join(10)
    assert "at" in got_lock


def check_yield_is_bounded() -> None:
    from django.db import connection

    release, held, got_lock = threading.Event(), threading.Event(), {}
    holder = in_thread(lambda: _hold_lock(release, held))
    assert held.wait(10)
    writer = in_thread(lambda: (_write(1), got_lock.setdefault("at", time.monotonic())))
    time.sleep(0.3)
    started = time.monotonic()
    connection.yield_to_queued_writers(0.2)
    waited = time.monotonic() - started
    # The writer is still queued behind the holder: the yield gave up after its bound.
    assert "at" not in got_lock and waited >= 0.2, (got_lock, waited)
    release.set()
    writer.join(10)
    holder.join(10)
    assert "at" in got_lock


def check_commits_checkpoint_off_the_lock() -> None:
    import sqlite3

    from django.conf import settings
    from django.db import connection

    from stigmem.sqlite_backend import base

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint")
        # Inside a commit only as a backstop, far above what the checkpoints after commits leave.
        assert cursor.fetchone()[0] == settings.SQLITE_WAL_AUTOCHECKPOINT_PAGES > 1000
    base.CHECKPOINT_INTERVAL_S = 0.0
    path = connection.settings_dict["NAME"]

    def rows_in_database_file() -> int | None:
        # immutable=1 reads the database file alone, without the WAL: what checkpoints copied there.
        probe = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return probe.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        except sqlite3.OperationalError:  # not even the table has been checkpointed yet
            return 0
        except sqlite3.DatabaseError:  # a checkpoint is copying pages right now: look again
            return None
        finally:
            probe.close()

    # First with checkpoints left to someone else (a sweep's thread): nobody copies these commits.
    connection.checkpoints_elsewhere = True
    for value in range(5):
        _write(value)
    time.sleep(1.0)
    assert rows_in_database_file() == 0
    connection.checkpoints_elsewhere = False

    # Then as usual: the process's thread checkpoints after the commits, all ten rows.
    for value in range(5):
        _write(value)
    deadline = time.monotonic() + 20
    while (seen := rows_in_database_file()) != 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == 10, seen


def check_background_writers_are_not_queued() -> None:
    from django.db import connection

    from stigmem.clock import background_writes

    release, held, got_lock = threading.Event(), threading.Event(), {}
    holder = in_thread(lambda: _hold_lock(release, held))
    assert held.wait(10)

    def background_writer() -> None:
        from django.db import connection

        with background_writes():
            _write(1)
        got_lock["at"] = time.monotonic()
        got_lock["queues_again"] = connection.joins_writer_queue  # outside the block

    writer = in_thread(background_writer)
    time.sleep(0.3)  # the writer is now blocked on the writer lock, but not queued
    assert "at" not in got_lock
    assert not connection.writers_queued()
    started = time.monotonic()
    connection.yield_to_queued_writers(5.0)
    assert time.monotonic() - started < 1.0  # nobody to make room for
    release.set()
    writer.join(10)
    holder.join(10)
    assert "at" in got_lock  # it got the lock once the holder let go
    assert got_lock["queues_again"] is True


CHECKS = {
    "yield": check_yield_waits_for_queued_writers,
    "yield-bounded": check_yield_is_bounded,
    "checkpoint": check_commits_checkpoint_off_the_lock,
    "background": check_background_writers_are_not_queued,
}


if __name__ == "__main__":
    _setup(Path(sys.argv[1]))
    CHECKS[sys.argv[2]]()
    print("ok")
