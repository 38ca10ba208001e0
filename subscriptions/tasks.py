"""django-q2 tasks of the delivery engine (schedules registered in ``SubscriptionsConfig.ready``)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from stigmem import logtail
from subscriptions import delivery

logger = logging.getLogger(__name__)

DELIVER_TASK = "subscriptions.tasks.run_deliveries"


def run_deliveries(budget_s: float = 50.0) -> int:
    """Deliver everything due, within the time budget; returns how many deliveries were claimed."""
    return delivery.run_deliveries(budget_s)


def prune_deliveries() -> int:
    """Delete delivered rows older than the replay window."""
    return delivery.prune_deliveries()


def _enqueue() -> None:
    from django_q.tasks import async_task  # needs the app registry

    try:
        # No result row for a kick that succeeded, as for the log consumers' kick (stigmem.logtail).
        async_task(DELIVER_TASK, group="subscriptions", save=False, sync=settings.Q_CLUSTER.get("sync", False))
    except Exception:  # a broker outage must not fail the write; the per-minute sweep delivers
        logger.exception("could not enqueue delivery; the scheduled sweep will deliver")


# Coalesced like the log consumers' kick: one task at the start of a burst of commits, one after.
_throttle = logtail._KickThrottle(_enqueue)


def kick() -> None:
    """Run the delivery workers soon after the current transaction commits (dispatch calls this)."""
    transaction.on_commit(_throttle.kick)
