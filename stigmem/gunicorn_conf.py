"""gunicorn settings used by ``manage.py runnode``."""

from __future__ import annotations

from prometheus_client import multiprocess


def child_exit(server, worker) -> None:
    # Prometheus multiprocess mode: drop the live gauges of a worker that is gone.
    multiprocess.mark_process_dead(worker.pid)
