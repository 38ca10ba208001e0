"""``manage.py ttprules``: sync, validate, list, state; outputs and exit codes. Plus the scheduled tasks."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone
from django_q.models import Schedule

from stigmem.schedules import ensure_schedules
from ttprules import tasks
from ttprules.apps import rules_directory_check
from ttprules.models import RuleState
from ttprules.store import current_revision, effective_state, set_state, sync_directory

from .store_helpers import SHIPPED, SHIPPED_COUNT, copy_pack, retitle, snapshot, state_events

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("ttprules", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def fails(*args: str) -> CommandError:
    with pytest.raises(CommandError) as raised:
        run(*args)
    assert raised.value.returncode == 1
    return raised.value


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    directory = copy_pack(tmp_path / "rules", "R0001", "R0002", "R0003")
    sync_directory(directory)
    return directory


# --- sync ------------------------------------------------------------------------------------------


def test_sync_prints_what_changed_and_the_summary(tmp_path: Path):
    directory = copy_pack(tmp_path / "rules", "R0001", "R0002")
    (directory / "R0003.yaml").write_text("rule_id: R0003\n")
    out = run("sync", "--dir", str(directory))
    assert out.splitlines() == [
        "R0003.yaml: line 1: missing required key 'rule_version'",
        "R0003.yaml: line 1: missing required key 'name'",
        "R0003.yaml: line 1: missing required key 'applies_to'",
        "R0003.yaml: line 1: missing required key 'match'",
        "R0003.yaml: line 1: missing required key 'emits'",
        "created: R0001, R0002, R0003",
        f"created=3 updated=0 unchanged=0 removed=0 invalid=1 revision=1 dir={directory}",
    ]
    (directory / "R0001.yaml").unlink()
    assert run("sync", "--dir", str(directory)).splitlines()[-2:] == [
        "removed: R0001",
        f"created=0 updated=0 unchanged=2 removed=1 invalid=1 revision=2 dir={directory}",
    ]


def test_sync_defaults_to_the_configured_directory(tmp_path: Path):
    assert run("sync").splitlines()[-1].startswith(f"created={SHIPPED_COUNT} ")
    directory = copy_pack(tmp_path / "rules", "R0001")
    with override_settings(STIGMEM_TTP_RULES_DIR=directory):
        assert run("sync").splitlines()[-1].startswith(f"created=0 updated=0 unchanged=1 removed={SHIPPED_COUNT - 1} ")


def test_sync_of_a_missing_directory_fails_and_removes_nothing(rules: Path, tmp_path: Path):
    error = fails("sync", "--dir", str(tmp_path / "nowhere"))
    assert str(error) == f"rules directory {tmp_path / 'nowhere'} does not exist or is not a directory"
    assert current_revision() == 1


# --- validate --------------------------------------------------------------------------------------


def test_validate_good_files(tmp_path: Path):
    good = str(SHIPPED / "R0001.yaml")
    assert run("validate", good, str(SHIPPED / "R0002.yaml")).splitlines() == [
        f"{good}: ok",
        f"{SHIPPED / 'R0002.yaml'}: ok",
    ]


def test_validate_prints_line_numbered_errors_and_exits_1(tmp_path: Path):
    good, bad, misnamed, gone = (tmp_path / name for name in ("R0001.yaml", "R0002.yaml", "R0001.yaml~", "gone.yaml"))
    good.write_text((SHIPPED / "R0001.yaml").read_text())
    bad.write_text((SHIPPED / "R0001.yaml").read_text().replace("confidence: 0.6", "confidence: 2"))
    misnamed.write_text(good.read_text())
    out = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("ttprules", "validate", str(good), str(bad), str(misnamed), str(gone), stdout=out)
    assert raised.value.returncode == 1
    assert str(raised.value) == "3 of 4 file(s) invalid"
    assert out.getvalue().splitlines() == [
        f"{good}: ok",
        f"{bad}: line 1: rule_id 'R0001' must equal the file name stem 'R0002'",
        f"{bad}: line 18: emits confidence must be greater than 0 and at most 1, got 2",
        f"{misnamed}: line 1: the file name must be <rule_id>.yaml or .yml; sync ignores this file",
        f"{gone}: line 1: cannot read the file: No such file or directory",
    ]


def test_validate_shows_warnings(tmp_path: Path):
    path = tmp_path / "R0001.yaml"
    path.write_text(
        "rule_id: R0001\nrule_version: 1\nname: t\napplies_to: [observed:command]\n"
        "match: {field: value.v, equals: yes}\n"
        "emits:\n  - {tactic: TA0002, technique_id: T1059, confidence: 0.5}\n"
    )
    assert run("validate", str(path)).splitlines() == [
        f"{path}: line 5: warning: 'equals' on value.v: YAML reads the unquoted yes as true; quote it for text",
        f"{path}: ok",
    ]


def test_validate_stores_nothing(tmp_path: Path):
    run("validate", str(SHIPPED / "R0001.yaml"))
    assert snapshot()[-1] == [] and current_revision() == 0


# --- list ------------------------------------------------------------------------------------------


def test_list(rules: Path):
    (rules / "R0002.yaml").write_text("rule_id: R0002\n")
    sync_directory(rules)
    set_state("R0001", "clipped", confidence_max=0.25, set_by="cli:test")
    set_state("R0003", "disabled", set_by="cli:test")
    (rules / "R0003.yaml").unlink()
    sync_directory(rules)
    assert run("list").splitlines() == [
        "RULE_ID  VALID  STATE          VERSION  NAME",
        "R0001    yes    clipped<=0.25  1        unix_shell_script_from_writable_dir",
        "R0002    no     enabled        -",
        "R0003    -      disabled       -        (no rule file)",
    ]


def test_list_shows_an_expiry(rules: Path):
    row = set_state("R0001", "shadow", expires_at=timezone.now() + timedelta(hours=1), set_by="cli:test")
    assert f"shadow until {row.expires_at.isoformat(timespec='seconds')}" in run("list")


def test_list_without_rules():
    assert run("list") == "no rules (run `manage.py ttprules sync`)\n"


# --- state -----------------------------------------------------------------------------------------


def test_state_sets_and_clears(rules: Path):
    out = run("state", "R0001", "clipped", "--confidence-max", "0.5", "--expires-in", "3600", "--reason", "trial")
    row = RuleState.objects.get(rule_id="R0001")
    assert out == f"R0001: clipped<=0.5 until {row.expires_at.isoformat(timespec='seconds')} (set by {row.set_by})\n"
    assert row.set_by.startswith("cli:") and row.reason == "trial" and row.confidence_max == 0.5
    assert 3590 < (row.expires_at - row.set_at).total_seconds() <= 3600
    assert run("state", "R0001", "enabled").startswith("R0001: enabled (set by cli:")
    assert effective_state("R0001") == ("enabled", None)
    assert len(state_events("R0001")) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["R0001", "paused"], "STATE: state must be one of enabled, disabled, clipped, shadow, got 'paused'"),
        (["R0001", "clipped"], "--confidence-max: confidence_max is required for the clipped state"),
        (["R0001", "clipped", "--confidence-max", "1.5"], "--confidence-max: confidence_max must be greater than 0"),
        (["R0001", "disabled", "--confidence-max", "0.5"], "--confidence-max: confidence_max applies to the clipped"),
        (["R0001", "disabled", "--expires-in", "0"], "--expires-in must be a positive number of seconds"),
        (["R0001", "disabled", "--expires-in", "-5"], "--expires-in must be a positive number of seconds"),
        (["R0001", "disabled", "--expires-in", str(10**12)], "--expires-in is too large"),
        (["R0001", "enabled", "--expires-in", "60"], "--expires-in: expires_at does not apply to enabled"),
        (["R0001", "disabled", "--reason", "x" * 2001], "--reason: reason must be at most 2000 characters"),
        (["R9999", "disabled"], "no rule R9999 (see `manage.py ttprules list`)"),
        (["R0001", "clipped", "--confidence-max", "half"], "argument --confidence-max: invalid float value: 'half'"),
        (["R0001", "disabled", "--expires-in", "1h"], "argument --expires-in: invalid int value: '1h'"),
    ],
)
def test_state_refuses_bad_input_with_exit_1_and_writes_nothing(rules: Path, args, message):
    before = snapshot()
    error = fails("state", *args)
    assert message in str(error)
    assert snapshot() == before


# --- scheduled tasks -------------------------------------------------------------------------------


def test_the_schedules_are_created_by_ensure_schedules():
    ensure_schedules()
    schedules = dict(Schedule.objects.filter(name__startswith="ttprules.").values_list("name", "func"))
    assert schedules == {
        "ttprules.sync": "ttprules.tasks.sync_rules",
        "ttprules.expire_states": "ttprules.tasks.expire_rule_states",
    }
    assert set(Schedule.objects.filter(name__startswith="ttprules.").values_list("minutes", flat=True)) == {1}


def test_the_sync_task_syncs_the_configured_directory(tmp_path: Path, caplog):
    directory = copy_pack(tmp_path / "rules", "R0001")
    (directory / "R0002.yaml").write_text("rule_id: R0002\n")
    with override_settings(STIGMEM_TTP_RULES_DIR=directory):
        assert tasks.sync_rules() == "created=2 updated=0 unchanged=0 removed=0 invalid=1 revision=1"
        assert "TTP rule file R0002.yaml is invalid: line 1: missing required key" in caplog.text
        caplog.clear()
        assert tasks.sync_rules() == "created=0 updated=0 unchanged=2 removed=0 invalid=1 revision=1"
        assert caplog.text == ""  # unchanged: not logged again every minute


def test_the_expiry_task_reverts_due_states(rules: Path):
    set_state("R0001", "disabled", expires_at=timezone.now() + timedelta(milliseconds=50), set_by="cli:test")
    RuleState.objects.filter(rule_id="R0001").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.expire_rule_states() == 1
    assert tasks.expire_rule_states() == 0
    assert effective_state("R0001") == ("enabled", None)


def test_a_missing_rules_directory_is_a_system_check_warning(tmp_path: Path):
    assert rules_directory_check() == []
    with override_settings(STIGMEM_TTP_RULES_DIR=tmp_path / "nowhere"):
        [warning] = rules_directory_check()
    assert warning.id == "ttprules.W001" and str(tmp_path / "nowhere") in warning.msg


def test_sync_refuses_a_non_positive_interval(rules: Path):
    before = snapshot()
    assert "--interval must be positive" in str(fails("sync", "--dir", str(rules), "--loop", "--interval", "0"))
    assert snapshot() == before


def test_sync_loop_runs_until_interrupted_and_reports_only_changes(rules: Path, monkeypatch):
    # Two passes: the first prints its summary, the second (nothing changed) prints nothing, and the
    # third sleep ends the loop the way an operator's Ctrl-C would.
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            retitle(rules / "R0001.yaml", "edited")
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("ttprules.management.commands.ttprules.time.sleep", sleep)
    # The loop lets its connection go while idle; the test's transaction must keep it.
    monkeypatch.setattr("ttprules.management.commands.ttprules.connections.close_all", lambda: None)
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        call_command("ttprules", "sync", "--dir", str(rules), "--loop", "--interval", "0.5", stdout=out)
    lines = out.getvalue().splitlines()
    assert sleeps == [0.5, 0.5, 0.5]
    assert lines[0].startswith("created=0 updated=0 unchanged=3")
    assert lines[1:] == ["updated: R0001", lines[2]] and lines[2].startswith("created=0 updated=1")
