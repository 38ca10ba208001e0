"""django-q2 tasks of the TTP rules (schedules registered in ``TtprulesConfig.ready``).

- ``sync_rules`` (every minute): the rules directory into the database (``store.sync_directory``);
  an unchanged directory costs a hash per file and takes no write lock;
- ``expire_rule_states`` (every minute): states whose ``expires_at`` has passed revert to enabled.

Both raise on failure (a missing rules directory, a database error), so the failed task shows in
the admin's failed-task list; the next run tries again.
"""

from __future__ import annotations

import logging

from ttprules import store

logger = logging.getLogger(__name__)


def sync_rules() -> str:
    """Sync the configured rules directory; returns the report's summary line (the task's result)."""
    report = store.sync_directory()
    if report.changed:
        # Only when something changed: a broken file is reported once per change, not every minute.
        logger.info("TTP rules synced from %s: %s", report.directory, report.summary())
        for problem in report.invalid:
            logger.warning("TTP rule file %s is invalid: %s", problem.file_name, "; ".join(problem.errors))
    return report.summary()


def expire_rule_states() -> int:
    """Revert expired rule states to enabled; returns how many were reverted."""
    reverted = store.expire_states()
    if reverted:
        logger.info("%d TTP rule state(s) expired and reverted to enabled", reverted)
    return reverted
