"""``manage.py ttprules``: the operator's side of the rule store (WIRE.md §8).

    ttprules sync [--dir D] [--loop [--interval S]]
                                     load the rules directory (default STIGMEM_TTP_RULES_DIR) now,
                                     or every S seconds until interrupted
    ttprules validate FILE...        check rule files without storing anything
    ttprules list                    rules with validity, state, version and name
    ttprules state RULE_ID STATE [--confidence-max F] [--expires-in SECONDS] [--reason R]
    ttprules backfill [--from-seq N] [--to-seq M] [--tenant T] [--rule RULE_ID ...]
                                     evaluate facts already in the log with the current rules

Exit codes: 0 done; 1 bad input, an invalid file given to ``validate``, or a missing rules directory.
``sync`` exits 0 when files are invalid: they are stored as invalid (and printed), the others load.
``state RULE_ID enabled`` clears the rule's state. States are node-wide, like the rules.
``backfill`` is idempotent: it writes (and announces) only tags that are missing.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils import timezone

from stigmem.management.operator import cli_operator
from stigmem.management.progress import ProgressBar, is_terminal
from ttprules import engine, store
from ttprules.backfill import BackfillReport, backfill
from ttprules.models import Rule, RuleState

EXIT_FAILED = 1
MAX_SEQ = 2**63 - 1  # Fact.seq is a BigIntegerField
# StateInvalid names the store's fields; the operator typed these.
OPTION_NAMES = {
    "state": "STATE",
    "confidence_max": "--confidence-max",
    "expires_at": "--expires-in",
    "reason": "--reason",
}


class Command(BaseCommand):
    help = "Sync, validate and list TTP rules; set a rule's state (disabled, clipped, shadow, enabled)."

    def add_arguments(self, parser) -> None:
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="subcommand")

        sync = commands.add_parser("sync", help="load the rules directory into the database now")
        sync.add_argument("--dir", dest="directory", help="rules directory (default: STIGMEM_TTP_RULES_DIR)")
        sync.add_argument("--loop", action="store_true", help="keep syncing every --interval seconds")
        sync.add_argument("--interval", type=float, default=60.0, help="seconds between syncs with --loop")

        validate = commands.add_parser("validate", help="check rule files; nothing is stored")
        validate.add_argument("files", nargs="+", metavar="FILE")

        commands.add_parser("list", help="list rules with validity, state, version and name")

        state = commands.add_parser("state", help="set a rule's state ('enabled' clears it)")
        state.add_argument("rule_id", metavar="RULE_ID")
        state.add_argument("state", metavar="STATE", help="enabled, disabled, clipped or shadow")
        state.add_argument("--confidence-max", type=float, help="clipped only: the most confidence a tag gets (0-1]")
        state.add_argument("--expires-in", type=int, metavar="SECONDS", help="revert to enabled after this long")
        state.add_argument("--reason", default="", help="why (kept in the history and the audit log)")

        refill = commands.add_parser("backfill", help="evaluate facts already in the log with the current rules")
        refill.add_argument("--from-seq", type=int, default=1, metavar="N", help="first fact seq (default 1)")
        refill.add_argument("--to-seq", type=int, metavar="M", help="last fact seq (default: the newest)")
        refill.add_argument("--tenant", help="only this tenant's facts")
        refill.add_argument(
            "--rule", dest="rule_ids", action="append", metavar="RULE_ID", help="only this rule (repeatable)"
        )

    def handle(self, *args, subcommand: str, **options) -> None:
        getattr(self, f"_{subcommand}")(**options)

    def _sync(self, *, directory: str | None, loop: bool, interval: float, **_) -> None:
        if interval <= 0:
            raise CommandError("--interval must be positive", returncode=EXIT_FAILED)
        self._sync_once(directory, quiet=False)
        while loop:
            connections.close_all()  # don't hold a connection while idle
            time.sleep(interval)
            self._sync_once(directory, quiet=True)

    def _sync_once(self, directory: str | None, *, quiet: bool) -> None:
        """One sync; in a loop, an unchanged directory prints nothing and a missing one is reported, not fatal."""
        try:
            report = store.sync_directory(directory)
        except store.RulesDirectoryMissing as exc:
            if quiet:
                self.stderr.write(str(exc))
                return
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        if quiet and not report.changed:
            return
        for problem in report.invalid:
            for error in problem.errors:
                self.stdout.write(f"{problem.file_name}: {error}")
        for outcome in ("created", "updated", "removed"):
            if rule_ids := getattr(report, outcome):
                self.stdout.write(f"{outcome}: {', '.join(rule_ids)}")
        self.stdout.write(f"{report.summary()} dir={report.directory}")

    def _validate(self, *, files: list[str], **_) -> None:
        invalid = 0
        for name in files:
            path = Path(name)
            result = store.parse_file(store.read_rule_file(path))
            errors = [str(e) for e in result.errors]
            if not store.RULE_FILE_NAME.match(path.name):
                errors.insert(0, "line 1: the file name must be <rule_id>.yaml or .yml; sync ignores this file")
            for error in errors:
                self.stdout.write(f"{name}: {error}")
            for warning in result.warnings:
                self.stdout.write(f"{name}: line {warning.line}: warning: {warning.message}")
            if errors:
                invalid += 1
            else:
                self.stdout.write(f"{name}: ok")
        if invalid:
            raise CommandError(f"{invalid} of {len(files)} file(s) invalid", returncode=EXIT_FAILED)

    def _list(self, **_) -> None:
        states = {row.rule_id: row for row in RuleState.objects.all()}
        rules = Rule.objects.defer("source").order_by("rule_id")
        rows = [_listed(rule, states.pop(rule.rule_id, None)) for rule in rules]
        # A state kept for a rule whose file is gone: it applies again if the file comes back.
        rows += [(rule_id, "-", _describe(row), "-", "(no rule file)") for rule_id, row in sorted(states.items())]
        if not rows:
            self.stdout.write("no rules (run `manage.py ttprules sync`)")
            return
        header = ("RULE_ID", "VALID", "STATE", "VERSION", "NAME")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
            self.stdout.write("  ".join([*cells, row[4]]).rstrip())

    def _state(
        self, *, rule_id: str, state: str, confidence_max: float | None, expires_in: int | None, reason: str, **_
    ) -> None:
        if expires_in is not None and expires_in <= 0:
            raise CommandError("--expires-in must be a positive number of seconds", returncode=EXIT_FAILED)
        try:
            expires_at = timezone.now() + timedelta(seconds=expires_in) if expires_in is not None else None
        except OverflowError:  # past the year 9999
            raise CommandError("--expires-in is too large", returncode=EXIT_FAILED) from None
        try:
            row = store.set_state(
                rule_id,
                state,
                confidence_max=confidence_max,
                expires_at=expires_at,
                reason=reason,
                set_by=cli_operator(),
            )
        except store.StateInvalid as exc:
            problems = "; ".join(f"{OPTION_NAMES.get(name, name)}: {message}" for name, message in exc.errors.items())
            raise CommandError(problems, returncode=EXIT_FAILED) from None
        except store.RuleNotFound:
            raise CommandError(f"no rule {rule_id} (see `manage.py ttprules list`)", returncode=EXIT_FAILED) from None
        self.stdout.write(f"{row.rule_id}: {_describe(row)} (set by {row.set_by})")

    def _backfill(
        self, *, from_seq: int, to_seq: int | None, tenant: str | None, rule_ids: list[str] | None, **_
    ) -> None:
        if from_seq < 1 or (to_seq is not None and to_seq < from_seq):
            raise CommandError("need 1 <= --from-seq <= --to-seq", returncode=EXIT_FAILED)
        if max(from_seq, to_seq or 0) > MAX_SEQ:  # beyond the seq column: the database would refuse it
            raise CommandError(f"--from-seq and --to-seq must be at most {MAX_SEQ}", returncode=EXIT_FAILED)
        if rule_ids:
            active = {a.rule.rule_id for a in engine.current_index().rules}
            if unknown := sorted(set(rule_ids) - active):
                raise CommandError(
                    f"not an active rule: {', '.join(unknown)} (see `manage.py ttprules list`)",
                    returncode=EXIT_FAILED,
                )
        bar = ProgressBar(self.stderr._out) if is_terminal(self.stderr._out) else None

        def progress(report: BackfillReport) -> None:
            if bar is not None:
                bar((report.position - report.first_seq + 1) / max(report.last_seq - report.first_seq + 1, 1))

        try:
            report = backfill(from_seq=from_seq, to_seq=to_seq, tenant=tenant, rule_ids=rule_ids, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        self.stdout.write(report.summary())


def _listed(rule: Rule, state: RuleState | None) -> tuple[str, str, str, str, str]:
    version = str(rule.rule_version) if rule.rule_version is not None else "-"
    return rule.rule_id, "yes" if rule.valid else "no", _describe(state), version, rule.name


def _describe(row: RuleState | None) -> str:
    """``disabled``, ``clipped<=0.5``, ``shadow until 2026-01-01T00:00:00+00:00``."""
    if row is None:
        return str(RuleState.State.ENABLED)
    text = str(row.state)
    if row.confidence_max is not None:
        text += f"<={row.confidence_max:g}"
    if row.expires_at is not None:
        text += f" until {row.expires_at.isoformat(timespec='seconds')}"
    return text
