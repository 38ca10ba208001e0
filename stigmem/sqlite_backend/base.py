"""SQLite backend whose write transactions queue on a file lock instead of SQLite's busy loop.

Every transaction on the node's SQLite database is ``BEGIN IMMEDIATE`` (settings.py), so only one
runs at a time. When several gunicorn threads and processes want the write lock, SQLite's busy
handler makes the losers sleep and retry with growing back-off (up to 100 ms per try): the lock
sits free while everyone sleeps, and throughput collapses under concurrent writers. Here each
transaction first takes an exclusive ``flock`` on ``<database>-writer.lock``: waiters block in the
kernel and the next one starts the moment the previous commits. Same serialization, no back-off.
In-memory databases (the test suite) keep the stock behaviour.
"""

from __future__ import annotations

import fcntl
import os

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    _writer_fd: int | None = None
    _writer_locked = False

    def _writer_lock_path(self) -> str | None:
        if self.is_in_memory_db():
            return None
        return f"{self.settings_dict['NAME']}-writer.lock"

    def _start_transaction_under_autocommit(self) -> None:
        path = self._writer_lock_path()
        if path is not None:
            if self._writer_fd is None:
                # One open file description per connection, so threads of one process exclude each other too.
                self._writer_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._writer_fd, fcntl.LOCK_EX)
            self._writer_locked = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_writer_lock()
            raise

    def _release_writer_lock(self) -> None:
        if self._writer_locked and self._writer_fd is not None:
            self._writer_locked = False
            fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_writer_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_writer_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_writer_lock()
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None
