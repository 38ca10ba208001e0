"""Helpers of the rule store tests: rule directories in tmp_path, and what a change leaves behind."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

from stigmem.models import AuditEvent, Event
from ttprules.models import Rule, RuleState, RuleStateChange
from ttprules.store import AUDIT_EVENT, current_revision

SHIPPED = Path(settings.BASE_DIR) / "ttprules" / "rules"
SHIPPED_COUNT = 45


def copy_pack(directory: Path, *rule_ids: str) -> Path:
    """The shipped rules (all, or the given ones) copied into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in sorted(SHIPPED.glob("*.yaml")):
        if not rule_ids or path.stem in rule_ids:
            shutil.copy(path, directory / path.name)
    return directory


def retitle(path: Path, description: str) -> None:
    """Change a shipped rule file's description (a real edit: new content, same rule)."""
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("description:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    path.write_text("".join([*lines[:start], f"description: {description}\n", *lines[end:]]))


def state_events(rule_id: str | None = None) -> list[Event]:
    topic = f"ttp.rule.state.{rule_id}" if rule_id else "ttp.rule.state."
    lookup = {"topic": topic} if rule_id else {"topic__startswith": topic}
    return list(Event.objects.filter(**lookup).order_by("seq"))


def state_audits() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=AUDIT_EVENT).order_by("id"))


def snapshot() -> tuple:
    """Everything a state change writes: compared before and after a change that must write nothing."""
    return (
        list(RuleState.objects.order_by("rule_id").values()),
        RuleStateChange.objects.count(),
        len(state_events()),
        len(state_audits()),
        current_revision(),
        list(Rule.objects.order_by("rule_id").values_list("rule_id", "content_sha256", "valid")),
    )
