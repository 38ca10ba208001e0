"""``manage.py prune_audit``: delete audit rows past the retention period (for cron users)."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from stigmem.audit import prune_audit


class Command(BaseCommand):
    help = "Delete audit log rows older than STIGMEM_AUDIT_RETENTION_DAYS (0 keeps them forever)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--days", type=int, help="retention in days for this run (default: the setting)")
        parser.add_argument("--loop", action="store_true", help="keep running, pruning every --interval seconds")
        parser.add_argument("--interval", type=float, default=86400.0, help="seconds between runs with --loop")

    def handle(self, *args, days: int | None, loop: bool, interval: float, **options) -> None:
        if days is not None and days < 0:
            raise CommandError("--days must be 0 (keep everything) or more")
        if interval <= 0:
            raise CommandError("--interval must be positive")
        while True:
            self._run(days)
            if not loop:
                return
            time.sleep(interval)

    def _run(self, days: int | None) -> None:
        retention = settings.STIGMEM_AUDIT_RETENTION_DAYS if days is None else days
        if retention <= 0:
            self.stdout.write("audit retention is 0 (keep forever): nothing pruned")
            return
        on_terminal = self.stdout.isatty()

        def progress(deleted: int) -> None:
            if on_terminal:
                self.stdout.write(f"\rpruned {deleted} rows…", ending="")
                self.stdout.flush()

        deleted = prune_audit(days=retention, progress=progress)
        if on_terminal and deleted:
            self.stdout.write("")
        self.stdout.write(f"pruned {deleted} audit rows older than {retention} days")
