"""Threads for tests that need several database connections at once, and waiting for them."""

from __future__ import annotations

import threading
import time


def in_thread(target) -> threading.Thread:
    """Start ``target`` in a daemon thread that closes its own database connection when done."""

    def run() -> None:
        from django.db import connection

        try:
            target()
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_until(predicate, timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
