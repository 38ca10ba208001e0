"""The rule store: the rules directory synced into the database, operator states, the revision.

Directory sync (``sync_directory``)
    Only files named ``<rule_id>.yaml`` or ``<rule_id>.yml`` (``^[A-Za-z0-9_]+\\.ya?ml$``) are rules;
    anything else, editor swap and backup files included (``.R0001.yaml.swp``, ``R0001.yaml~``,
    ``#R0001.yaml#``), is ignored without a word. A file is identified by its stem, which the schema
    requires to equal its ``rule_id``. Its content is hashed (SHA-256): a file saved again unchanged
    is no change, and is not even parsed again (unless the validator or the ATT&CK catalogue changed
    since, see ``Rule.parser_sha256``). A broken file is stored as invalid with its line-numbered
    errors and never stops the others loading. A file that is gone (deleted, renamed) loses its row.
    When two files share a stem (``R1.yaml`` and ``R1.yml``), the first by sorted name is the rule
    and the other is reported as invalid and not stored. Files are read and parsed before the
    transaction; the database is changed in one transaction, which bumps the revision once if
    anything changed (one bump per sync, however many rules changed) and writes one
    ``ttp.rule.reloaded.<rule_id>`` event per rule created, updated or removed. A missing rules directory is
    an error, not an empty pack: an unmounted volume must not delete every rule.

States (``set_state``, ``clear_state``, ``expire_states``)
    Every change writes a ``RuleStateChange`` row, an audit row (``ttp_rule_state``) and a
    ``ttp.rule.state.<rule_id>`` node event, and bumps the revision, all in one transaction: if any
    of it fails, the change raises and nothing of it remains. Every call records a change, even one
    that sets the values a rule already has: the operator's action, actor and reason are what the
    history is for. Audit rows and events go to ``STIGMEM_DEFAULT_TENANT``: rules are node-wide
    (``ttprules.models``).

Locks are always taken in the same order, so concurrent changes queue and never deadlock: the
revision row first (every change takes it, so changes are serialized across processes and a change
reads the state it replaces under the lock), then rule or state rows, then the node clock (the
event, written last, so the clock that every fact write needs is held only until the commit).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from stigmem import audit, events
from ttprules import attack, schema
from ttprules.models import MAX_ACTOR_LENGTH, Rule, RuleRevision, RuleState, RuleStateChange
from ttprules.schema import MAX_RULE_BYTES, MAX_RULE_ID_LENGTH, ParsedRule, RuleError, parse_rule

RULE_FILE_NAME = re.compile(r"^[A-Za-z0-9_]+\.ya?ml$")
AUDIT_EVENT = "ttp_rule_state"
EXPIRY_ACTOR = "stigmem:ttprules:expiry"
EXPIRY_REASON = "expired"
MAX_REASON_LENGTH = 2000
_READ_CHUNK = 64 * 1024

State = RuleState.State
Cause = RuleStateChange.Cause


# --- reading rule files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleFile:
    """One rule file as read from disk: its text (at most ``MAX_RULE_BYTES`` of it) and hash."""

    path: Path
    sha256: str
    text: str
    problem: RuleError | None = None  # a file that could not be read or decoded

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def rule_id(self) -> str:
        return self.path.stem


def read_rule_file(path: Path) -> RuleFile:
    """Read and hash a file; an unreadable, oversized or non-UTF-8 file carries its ``problem``.

    The whole file is hashed but at most ``MAX_RULE_BYTES + 1`` bytes are kept: a huge file in the
    directory costs a read, not its size in memory.
    """
    digest = hashlib.sha256()
    head = bytearray()
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(_READ_CHUNK):
                digest.update(chunk)
                if len(head) <= MAX_RULE_BYTES:
                    head += chunk[: MAX_RULE_BYTES + 1 - len(head)]
    except OSError as exc:
        return RuleFile(path, "", "", RuleError(1, f"cannot read the file: {exc.strerror or exc}"))
    sha256 = digest.hexdigest()
    if len(head) > MAX_RULE_BYTES:
        return RuleFile(path, sha256, "", RuleError(1, f"rule file exceeds {MAX_RULE_BYTES // 1024} KiB"))
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = head.count(b"\n", 0, exc.start) + 1
        text = head.decode("utf-8", "replace")
        return RuleFile(path, sha256, text, RuleError(line, f"the file is not UTF-8 text (byte {exc.start})"))
    return RuleFile(path, sha256, text)


def parse_file(rule_file: RuleFile) -> schema.RuleParse:
    if rule_file.problem is not None:
        return schema.RuleParse(None, [rule_file.problem])
    return parse_rule(rule_file.text, rule_file.name)


@functools.cache
def parser_fingerprint() -> str:
    """Identifies the validator and catalogue: stored results of another one are not trusted."""
    digest = hashlib.sha256()
    for path in (Path(schema.__file__), attack.DATA_PATH):
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- directory sync ------------------------------------------------------------------------------


class RulesDirectoryMissing(Exception):
    """The configured rules directory does not exist or is not a directory."""


@dataclass(frozen=True)
class InvalidFile:
    file_name: str
    errors: tuple[str, ...]
    stored: bool  # False: the file was not stored at all (its rule id is taken, or too long)


@dataclass
class SyncReport:
    """What a sync did, by rule id. An invalid file that was stored is also in created, updated or
    unchanged (its row is); ``invalid`` lists every invalid file, stored or not."""

    directory: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    invalid: list[InvalidFile] = field(default_factory=list)
    revision: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed)

    def summary(self) -> str:
        return (
            f"created={len(self.created)} updated={len(self.updated)} unchanged={len(self.unchanged)} "
            f"removed={len(self.removed)} invalid={len(self.invalid)} revision={self.revision}"
        )


def rule_files(directory: Path) -> tuple[list[Path], list[InvalidFile]]:
    """The rule files of a directory, one per rule id (sorted by name); the files left out."""
    if not directory.is_dir():
        raise RulesDirectoryMissing(f"rules directory {directory} does not exist or is not a directory")
    chosen: dict[str, Path] = {}
    skipped: list[InvalidFile] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if not RULE_FILE_NAME.match(path.name) or not path.is_file():
            continue
        rule_id = path.stem
        if len(rule_id) > MAX_RULE_ID_LENGTH:
            message = f"line 1: the file name stem is longer than {MAX_RULE_ID_LENGTH} characters, the rule id limit"
            skipped.append(InvalidFile(path.name, (message,), stored=False))
        elif rule_id in chosen:
            message = f"line 1: rule id {rule_id} is already defined by {chosen[rule_id].name}; this file is ignored"
            skipped.append(InvalidFile(path.name, (message,), stored=False))
        else:
            chosen[rule_id] = path
    return list(chosen.values()), skipped


@dataclass(frozen=True)
class _Definition:
    """The columns of a Rule row that a parse determines."""

    valid: bool
    errors: list[str]
    warnings: list[str]
    rule_version: int | None
    name: str
    parsed: dict[str, Any] | None

    @classmethod
    def of(cls, result: schema.RuleParse) -> _Definition:
        rule = result.rule
        return cls(
            valid=rule is not None,
            errors=[_storable(str(e)) for e in result.errors],
            warnings=[_storable(str(w)) for w in result.warnings],
            rule_version=rule.rule_version if rule else None,
            name=_storable(rule.name) if rule else "",
            parsed=_parsed_json(rule) if rule else None,
        )

    @classmethod
    def stored(cls, row: Rule) -> _Definition:
        return cls(row.valid, row.errors, row.warnings, row.rule_version, row.name, row.parsed)


def _parsed_json(rule: ParsedRule) -> dict[str, Any]:
    return {
        "description": _storable(rule.description),
        "applies_to": [_storable(p) for p in rule.applies_to],
        "emits": [asdict(emit) for emit in rule.emits],
        "evidence_fields": list(rule.evidence_fields),
    }


def _storable(text: str) -> str:
    # PostgreSQL stores no NUL in text or jsonb; the schema rejects such files, but their source and
    # messages are still stored for the operator to see.
    return text.replace("\x00", "\ufffd")


def sync_directory(path: str | Path | None = None) -> SyncReport:
    """Make the Rule rows match the rules directory (default ``STIGMEM_TTP_RULES_DIR``)."""
    directory = Path(path if path is not None else settings.STIGMEM_TTP_RULES_DIR)
    paths, skipped = rule_files(directory)
    files = [read_rule_file(p) for p in paths]
    fingerprint = parser_fingerprint()
    # Files are parsed outside the transaction (on SQLite it holds the node's one write lock), those
    # the stored rows say have changed; a row a concurrent sync changed meanwhile is parsed inside.
    stored = _stored_rules()
    parses = {f.rule_id: parse_file(f) for f in files if not _is_current(stored.get(f.rule_id), f, fingerprint)}
    if parses or stored.keys() != {f.rule_id for f in files}:
        with transaction.atomic():
            revision = _locked_revision()
            report = _apply(directory, files, _stored_rules(), parses, fingerprint)
            report.revision = _bump(revision) if report.changed else revision.revision
            _announce(report)
    else:
        # The every-minute case: every file is current, so _apply writes nothing and needs no lock.
        report = _apply(directory, files, stored, parses, fingerprint)
        report.revision = current_revision()
    report.invalid += skipped
    report.invalid.sort(key=lambda item: item.file_name)
    return report


def _announce(report: SyncReport) -> None:
    """One ``ttp.rule.reloaded.<rule_id>`` event per rule created, changed or removed by a sync."""
    rows = {row.rule_id: row for row in Rule.objects.filter(rule_id__in=report.created + report.updated)}
    changes = [(rule_id, "created") for rule_id in report.created]
    changes += [(rule_id, "updated") for rule_id in report.updated]
    changes += [(rule_id, "removed") for rule_id in report.removed]
    for rule_id, change in sorted(changes):
        row = rows.get(rule_id)
        payload = {
            "rule_id": rule_id,
            "change": change,
            "rule_version": row.rule_version if row is not None else None,
            "valid": row.valid if row is not None else None,
            "errors": list(row.errors) if row is not None else [],
            "revision": report.revision,
        }
        events.publish(settings.STIGMEM_DEFAULT_TENANT, events.ttp_rule_reloaded(rule_id), payload)


def _stored_rules() -> dict[str, Rule]:
    # The source is only written, never compared (the hash is): not worth reading every minute.
    return {row.rule_id: row for row in Rule.objects.defer("source")}


def _is_current(row: Rule | None, rule_file: RuleFile, fingerprint: str) -> bool:
    """Whether the row holds this file as it is now, validated by the current validator."""
    return row is not None and (row.file_name, row.content_sha256, row.parser_sha256) == (
        rule_file.name,
        rule_file.sha256,
        fingerprint,
    )


def _apply(
    directory: Path,
    files: list[RuleFile],
    rows: dict[str, Rule],
    parses: dict[str, schema.RuleParse],
    fingerprint: str,
) -> SyncReport:
    report = SyncReport(str(directory))
    now = timezone.now()
    for rule_file in files:
        row = rows.pop(rule_file.rule_id, None)
        if row is not None and _is_current(row, rule_file, fingerprint):
            outcome, definition = "unchanged", _Definition.stored(row)
        else:
            # Parsed here only when a concurrent sync changed the row after the read before the transaction.
            definition = _Definition.of(parses.get(rule_file.rule_id) or parse_file(rule_file))
            outcome = _save(row, rule_file, definition, fingerprint, now)
        getattr(report, outcome).append(rule_file.rule_id)
        if not definition.valid:
            report.invalid.append(InvalidFile(rule_file.name, tuple(definition.errors), stored=True))
    if rows:  # their files are gone from the directory
        Rule.objects.filter(rule_id__in=list(rows)).delete()
        report.removed = sorted(rows)
    return report


def _save(row: Rule | None, rule_file: RuleFile, definition: _Definition, fingerprint: str, now: datetime) -> str:
    """Create or update one row; returns the report list it belongs to: created, updated or unchanged."""
    if row is None:
        Rule.objects.create(
            rule_id=rule_file.rule_id,
            file_name=rule_file.name,
            content_sha256=rule_file.sha256,
            parser_sha256=fingerprint,
            source=_storable(rule_file.text),
            loaded_at=now,
            updated_at=now,
            **asdict(definition),
        )
        return "created"
    same_file = (row.file_name, row.content_sha256) == (rule_file.name, rule_file.sha256)
    if same_file and _Definition.stored(row) == definition:
        # Only the validator or the catalogue changed, and the file reads the same under the new ones.
        Rule.objects.filter(pk=row.pk).update(parser_sha256=fingerprint)
        return "unchanged"
    for name, value in asdict(definition).items():
        setattr(row, name, value)
    row.file_name, row.content_sha256, row.parser_sha256 = rule_file.name, rule_file.sha256, fingerprint
    row.source = _storable(rule_file.text)
    row.updated_at = now
    row.save()
    return "updated"


# --- the revision ----------------------------------------------------------------------------------


def current_revision() -> int:
    """The committed revision of the rule definitions and states (0 before the first change)."""
    return RuleRevision.objects.filter(pk=1).values_list("revision", flat=True).first() or 0


def _locked_revision() -> RuleRevision:
    """The revision row, locked until the end of the caller's transaction (created if missing).

    The row is created on first use rather than by a data migration: a transactional test (or a
    flush) empties the table, and two first changes racing to create it must both end up holding it.
    """
    row = RuleRevision.objects.select_for_update().filter(pk=1).first()
    if row is not None:
        return row
    try:
        with transaction.atomic():  # a savepoint: a lost race must not poison the caller's transaction
            return RuleRevision.objects.create(pk=1, revision=0)
    except IntegrityError:  # another transaction created it first; it has committed by now
        return RuleRevision.objects.select_for_update().get(pk=1)


def _bump(row: RuleRevision) -> int:
    RuleRevision.objects.filter(pk=row.pk).update(revision=F("revision") + 1)
    row.revision += 1
    return row.revision


T = TypeVar("T")
_NOT_BUILT: Any = object()


class RuleIndexCache(Generic[T]):
    """A per-process object built from the rule store (the engine's rule index), rebuilt by ``build``
    whenever ``current_revision()`` has moved since it was built. Thread-safe; one build at a time.

    The revision is read before building: a change committing during the build makes the next
    ``get()`` build again, never keep a stale object. Call it outside a transaction that changes
    rules: a build that saw a change later rolled back would carry a revision number that the next
    committed change reuses.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._value: T = _NOT_BUILT
        self._revision = -1

    def get(self) -> T:
        revision = current_revision()
        with self._lock:
            if self._value is _NOT_BUILT or revision != self._revision:
                self._value = self._build()
                self._revision = revision
            return self._value

    @property
    def revision(self) -> int | None:
        """The revision the cached object was built at (None before the first build)."""
        return None if self._value is _NOT_BUILT else self._revision

    def clear(self) -> None:
        with self._lock:
            self._value, self._revision = _NOT_BUILT, -1


# --- states ----------------------------------------------------------------------------------------


class RuleNotFound(LookupError):
    def __init__(self, rule_id: str) -> None:
        super().__init__(f"no rule {rule_id!r}")
        self.rule_id = rule_id


class StateInvalid(ValueError):
    """Bad state input; ``errors`` maps each offending field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))


def validate_state(
    state: Any, confidence_max: Any, expires_at: Any, reason: Any, set_by: Any, now: datetime | None = None
) -> None:
    """Raise ``StateInvalid`` naming every bad field (nothing is looked up in the database)."""
    now = now or timezone.now()
    errors: dict[str, str] = {}
    if state not in State.values:
        errors["state"] = f"state must be one of {', '.join(State.values)}, got {state!r}"
    if state == State.CLIPPED:
        if confidence_max is None:
            errors["confidence_max"] = "confidence_max is required for the clipped state"
        elif not _is_number(confidence_max) or not 0 < confidence_max <= 1:
            errors["confidence_max"] = f"confidence_max must be greater than 0 and at most 1, got {confidence_max!r}"
    elif confidence_max is not None and "state" not in errors:
        errors["confidence_max"] = f"confidence_max applies to the clipped state only, not to {state}"
    if expires_at is not None:
        if not isinstance(expires_at, datetime):
            errors["expires_at"] = f"expires_at must be a datetime, got {type(expires_at).__name__}"
        elif timezone.is_naive(expires_at):
            errors["expires_at"] = "expires_at must carry a time zone"
        elif expires_at <= now:
            errors["expires_at"] = "expires_at must be in the future"
        elif state == State.ENABLED:
            errors["expires_at"] = "expires_at does not apply to enabled, the state rules revert to"
    if not isinstance(reason, str):
        errors["reason"] = "reason must be a string"
    elif len(reason) > MAX_REASON_LENGTH:
        errors["reason"] = f"reason must be at most {MAX_REASON_LENGTH} characters"
    elif "\x00" in reason:
        errors["reason"] = "reason must not contain NUL characters"
    if not isinstance(set_by, str) or not set_by.strip() or "\x00" in set_by:
        errors["set_by"] = "set_by must name who sets the state"
    if errors:
        raise StateInvalid(errors)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def set_state(
    rule_id: str,
    state: str,
    *,
    confidence_max: float | None = None,
    expires_at: datetime | None = None,
    reason: str = "",
    set_by: str,
) -> RuleState:
    """Set a rule's state (``enabled`` clears it); recorded in the history, the audit log and an event.

    Raises ``StateInvalid`` for bad input and ``RuleNotFound`` when no file defines the rule (it may
    be invalid: an operator may disable a rule before fixing it). ``enabled`` is also accepted for a
    rule whose file is gone but whose state is still stored, so such a state can be dropped.
    """
    validate_state(state, confidence_max, expires_at, reason, set_by)
    if not isinstance(rule_id, str) or not schema.RULE_ID.fullmatch(rule_id) or len(rule_id) > MAX_RULE_ID_LENGTH:
        raise RuleNotFound(str(rule_id))
    with transaction.atomic():
        revision = _locked_revision()
        current = RuleState.objects.select_for_update().filter(rule_id=rule_id).first()
        if not Rule.objects.filter(rule_id=rule_id).exists() and (state != State.ENABLED or current is None):
            raise RuleNotFound(rule_id)
        previous = current.state if current is not None else State.ENABLED
        row = current or RuleState(rule_id=rule_id)
        row.state = state
        row.confidence_max = float(confidence_max) if confidence_max is not None else None
        row.expires_at = expires_at
        row.set_by = set_by[:MAX_ACTOR_LENGTH]
        row.set_at = timezone.now()
        row.reason = reason
        row.save()
        _record([(previous, row)], Cause.OPERATOR)
        _bump(revision)
    return row


def clear_state(rule_id: str, *, reason: str = "", set_by: str) -> RuleState:
    """Back to enabled (the default state), recorded like any other change."""
    return set_state(rule_id, State.ENABLED, reason=reason, set_by=set_by)


def expire_states(now: datetime | None = None) -> int:
    """Revert every state whose ``expires_at`` has passed to enabled; returns how many were reverted.

    Each is reverted exactly once, with one history row, audit row and event, however many sweeps
    run at once: only a sweep whose conditional UPDATE (``expires_at <= now AND state != enabled``)
    changed the row records the reversion.
    """
    now = now or timezone.now()
    due = RuleState.objects.filter(expires_at__lte=now).exclude(state=State.ENABLED)
    if not due.exists():  # the every-minute case: no lock taken
        return 0
    changes: list[tuple[str, RuleState]] = []
    with transaction.atomic():
        revision = _locked_revision()
        reverted_at = timezone.now()  # when it happened (``now`` is only the cut-off)
        for row in due.order_by("rule_id"):
            if _revert(row, now, reverted_at):
                changes.append((row.state, RuleState(pk=row.pk, rule_id=row.rule_id, set_at=reverted_at, **_EXPIRED)))
        if changes:
            _record(changes, Cause.EXPIRY)
            _bump(revision)
    return len(changes)


# What an expired state becomes.
_EXPIRED: dict[str, Any] = {
    "state": State.ENABLED,
    "confidence_max": None,
    "expires_at": None,
    "set_by": EXPIRY_ACTOR,
    "reason": EXPIRY_REASON,
}


def _revert(row: RuleState, now: datetime, reverted_at: datetime) -> bool:
    """The conditional UPDATE: true only for the one sweep that changed the row from what it read."""
    updated = (
        RuleState.objects.filter(pk=row.pk, state=row.state, expires_at=row.expires_at, expires_at__lte=now)
        .exclude(state=State.ENABLED)
        .update(**_EXPIRED, set_at=reverted_at)
    )
    return updated == 1


def _record(changes: Iterable[tuple[str, RuleState]], cause: str) -> None:
    """History rows and audit rows, then the events (last: they take the node clock's lock).

    A history row holds the state set (``to_state`` with its confidence_max, expires_at, set_by,
    set_at, reason); for an expiry that is enabled, by ``EXPIRY_ACTOR``.
    """
    tenant = settings.STIGMEM_DEFAULT_TENANT
    payloads = []
    for previous, row in changes:
        RuleStateChange.objects.create(
            rule_id=row.rule_id,
            from_state=previous,
            to_state=row.state,
            confidence_max=row.confidence_max,
            expires_at=row.expires_at,
            set_by=row.set_by,
            set_at=row.set_at,
            reason=row.reason,
            cause=cause,
        )
        payload = state_record(row) | {"previous_state": str(previous), "cause": str(cause)}
        audit.record(tenant, AUDIT_EVENT, actor=row.set_by, target=row.rule_id, detail=payload)
        payloads.append(payload)
    for payload in payloads:
        events.publish(tenant, events.ttp_rule_state(payload["rule_id"]), payload)


def state_record(row: RuleState) -> dict[str, Any]:
    """A state as JSON (event payloads, audit details, later the API)."""
    return {
        "rule_id": row.rule_id,
        "state": str(row.state),
        "confidence_max": row.confidence_max,
        "expires_at": _iso(row.expires_at),
        "set_by": row.set_by,
        "set_at": _iso(row.set_at),
        "reason": row.reason,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def effective_state(rule_id: str) -> tuple[str, float | None]:
    """(state, confidence_max) of a rule: ``enabled`` without a stored state.

    The state as stored: one whose ``expires_at`` has passed still applies until the sweep (every
    minute) reverts it, so that what the engine applies, what the API shows and the events agree.
    """
    row = RuleState.objects.filter(rule_id=rule_id).values_list("state", "confidence_max").first()
    return (row[0], row[1]) if row is not None else (State.ENABLED, None)
