"""Threads for tests that need several database connections at once."""

from __future__ import annotations

import threading


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
