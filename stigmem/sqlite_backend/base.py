"""SQLite backend whose write transactions queue on a file lock instead of SQLite's busy loop.

Every transaction on the node's SQLite database is ``BEGIN IMMEDIATE`` (settings.py), so only one
runs at a time. When several gunicorn threads and processes want the write lock, SQLite's busy
handler makes the losers sleep and retry with growing back-off (up to 100 ms per try): the lock
sits free while everyone sleeps, and throughput collapses under concurrent writers. Here each
transaction first takes an exclusive ``flock`` on ``<database>-writer.lock``: waiters block in the
kernel and the next one starts the moment the previous commits. Same serialization, no back-off.
In-memory databases (the test suite) keep the stock behaviour.

Bulk work (a decay sweep) commits chunk after chunk and would otherwise win the writer lock again
before the writers queued behind a chunk get their turn. So a writer waiting for the lock holds a
shared ``flock`` on ``<database>-writer.queue`` meanwhile, and ``yield_to_queued_writers()`` waits
until nobody holds it: everyone who queued during the last chunk has had the lock by then.

WAL checkpoints run after the writer lock is released: SQLite's automatic checkpoint runs in the
commit that crosses its threshold, with the lock still held, so every writer queued behind that
commit waited for the checkpoint's copying and fsyncs too. Here a commit asks a thread of the process
to checkpoint (PASSIVE: it never blocks writers), which it does at most once per
``CHECKPOINT_INTERVAL_S``; a connection whose owner checkpoints by other means (a decay sweep's own
thread) sets ``checkpoints_elsewhere``.
Under steady writes such a checkpoint always races the next writer, which then cannot start the
WAL over, so SQLite's automatic checkpoint stays on as a backstop at a high threshold
(settings.SQLITE_WAL_AUTOCHECKPOINT_PAGES): by then the checkpoints off the lock have copied almost
every page, and the one inside the commit has little left to do before the WAL restarts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

from django.conf import settings
from django.db.backends.sqlite3 import base
from django.db.backends.sqlite3.base import Database

logger = logging.getLogger(__name__)

# How often a yielding connection looks whether the writers queued behind it are through.
_YIELD_POLL_S = 0.0005
# Each process checkpoints a database's WAL at most this often (after commits).
CHECKPOINT_INTERVAL_S = 1.0


class _Checkpointer:
    """A thread that checkpoints one database's WAL (PASSIVE) at most every CHECKPOINT_INTERVAL_S.

    One per process and database file. Commits only ``request()`` a checkpoint, so no request
    waits for the copying and fsyncs, not even the one that committed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = 0  # checkpoints run so far (tests wait on it)
        self._due = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._due.set()

    def _run(self) -> None:
        connection = Database.connect(self.path, timeout=30, check_same_thread=False)
        while True:
            self._due.wait()
            self._due.clear()
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
            except Database.Error:
                # The commits stand; a missed checkpoint only leaves the WAL longer until the next one.
                logger.warning("WAL checkpoint failed", exc_info=True)
            self.done += 1
            time.sleep(CHECKPOINT_INTERVAL_S)


_checkpointers: dict[tuple[int, str], _Checkpointer] = {}
_checkpointers_lock = threading.Lock()


def _checkpointer_for(path: str) -> _Checkpointer:
    # Keyed by process id too: a forked process (gunicorn worker) has no copy of its parent's thread.
    key = (os.getpid(), path)
    checkpointer = _checkpointers.get(key)
    if checkpointer is None:
        with _checkpointers_lock:
            checkpointer = _checkpointers.get(key)
            if checkpointer is None:
                checkpointer = _checkpointers[key] = _Checkpointer(path)
    return checkpointer


class DatabaseWrapper(base.DatabaseWrapper):
    _writer_fd: int | None = None
    _queue_fd: int | None = None
    _writer_locked = False
    checkpoints_elsewhere = False
    # False while the connection does background writes (``stigmem.clock.background_writes``), and
    # always in a background process (the qcluster): it waits for the writer lock without joining
    # the queue that bulk work makes room for.
    joins_writer_queue = not settings.STIGMEM_BACKGROUND_PROCESS

    def _writer_lock_path(self) -> str | None:
        if self.is_in_memory_db():
            return None
        return f"{self.settings_dict['NAME']}-writer.lock"

    def _open_lock_files(self, path: str) -> None:
        # One open file description per connection, so threads of one process exclude each other too.
        if self._writer_fd is None:
            self._writer_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self._queue_fd is None:
            queue = path.removesuffix(".lock") + ".queue"
            self._queue_fd = os.open(queue, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _start_transaction_under_autocommit(self) -> None:
        path = self._writer_lock_path()
        if path is not None:
            self._open_lock_files(path)
            queued = self.joins_writer_queue
            if queued:
                fcntl.flock(self._queue_fd, fcntl.LOCK_SH)
            try:
                fcntl.flock(self._writer_fd, fcntl.LOCK_EX)
            finally:
                if queued:
                    fcntl.flock(self._queue_fd, fcntl.LOCK_UN)
            self._writer_locked = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_writer_lock()
            raise

    def yield_to_queued_writers(self, max_wait_s: float) -> None:
        """Wait (at most ``max_wait_s``) until no writer is queued for the writer lock.

        For bulk work between two of its transactions: the writers that queued during the last
        one go first. Bounded, so a steady stream of writers slows bulk work but cannot stop it.
        """
        if self._writer_locked:
            return
        deadline = time.monotonic() + max_wait_s
        while self.writers_queued() and time.monotonic() < deadline:
            time.sleep(_YIELD_POLL_S)

    def writers_queued(self) -> bool:
        """Whether another connection is waiting for the writer lock (one non-blocking syscall)."""
        path = self._writer_lock_path()
        if path is None:
            return False
        self._open_lock_files(path)
        try:
            fcntl.flock(self._queue_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._queue_fd, fcntl.LOCK_UN)
        return False

    def _release_writer_lock(self) -> None:
        if self._writer_locked and self._writer_fd is not None:
            self._writer_locked = False
            fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_writer_lock()
            self._checkpoint_now_and_then()

    def _checkpoint_now_and_then(self) -> None:
        path = self._writer_lock_path()
        if self.checkpoints_elsewhere or path is None:
            return
        _checkpointer_for(self.settings_dict["NAME"]).request()

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
            for name in ("_writer_fd", "_queue_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    os.close(fd)
                    setattr(self, name, None)
