"""``manage.py decay_sweep``: one synchronous decay sweep of a tenant, for operators and cron.

Exit codes (for cron to act on):

- 0: the sweep finished (the summary line is printed);
- 1: bad options, or the sweep failed;
- 2: another sweep of the tenant is running (nothing was done; try again later).

Options are validated by the same rules as ``POST /v1/decay/sweep``. On a terminal a progress
bar is drawn on stderr; otherwise (cron, pipes) only the summary line is printed on stdout.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from decay import service
from decay.sweep import SweepBusy, run_sweep
from stigmem.errors import ApiError, InputInvalid
from stigmem.management.progress import ProgressBar, is_terminal

EXIT_BAD_INPUT = 1
EXIT_BUSY = 2
EXIT_FAILED = 1
ACTOR = "stigmem:cli:decay_sweep"
MAX_TENANT_LENGTH = 64
OPTION_NAMES = {"ttl_seconds": "--ttl-seconds", "min_confidence": "--min-confidence", "dry_run": "--dry-run"}


class Command(BaseCommand):
    help = "Run one decay sweep of a tenant now (exit 0 done, 1 bad input or failure, 2 another sweep is running)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", help="tenant id (default: STIGMEM_DEFAULT_TENANT)")
        parser.add_argument("--scope", help="only facts of this scope: local, team, company or public")
        parser.add_argument("--ttl-seconds", help="expire facts without valid_until older than this (0: all of them)")
        parser.add_argument("--min-confidence", help="expire current facts whose effective confidence is below this")
        parser.add_argument("--dry-run", action="store_true", help="count the candidates, change nothing")

    def handle(self, *args, **options) -> None:
        tenant = options.get("tenant") or settings.STIGMEM_DEFAULT_TENANT
        if len(tenant) > MAX_TENANT_LENGTH or "\x00" in tenant:
            raise CommandError(f"--tenant must be at most {MAX_TENANT_LENGTH} characters", returncode=EXIT_BAD_INPUT)
        params = {
            "scope": options.get("scope"),
            "ttl_seconds": options.get("ttl_seconds"),
            "min_confidence": options.get("min_confidence"),
            "dry_run": "true" if options.get("dry_run") else None,
        }
        try:
            request = service.parse_sweep_query(tenant, {k: v for k, v in params.items() if v is not None})
        except InputInvalid as exc:
            problems = "; ".join(f"{OPTION_NAMES.get(e['loc'][-1], e['loc'][-1])}: {e['msg']}" for e in exc.detail)
            raise CommandError(problems, returncode=EXIT_BAD_INPUT) from None
        except ApiError as exc:  # the unknown scope (400 on the API)
            message = exc.detail.get("message") if isinstance(exc.detail, dict) else exc.detail
            raise CommandError(f"--scope: {message}", returncode=EXIT_BAD_INPUT) from None

        bar = ProgressBar(self.stderr._out) if is_terminal(self.stderr._out) else None
        started = time.monotonic()
        try:
            result = run_sweep(request, actor=ACTOR, progress=bar)
        except SweepBusy:
            raise CommandError(f"{service.BUSY_DETAIL} (tenant {tenant})", returncode=EXIT_BUSY) from None
        except Exception as exc:
            raise CommandError(f"sweep failed: {type(exc).__name__}: {exc}", returncode=EXIT_FAILED) from exc
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"scanned={result.scanned} decayed={result.decayed} dry_run={str(result.dry_run).lower()} "
            f"tenant={tenant} time={elapsed:.2f}s"
        )
