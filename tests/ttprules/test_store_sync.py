"""The rules directory synced into the database (ttprules.store.sync_directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ttprules import store
from ttprules.models import Rule
from ttprules.schema import MAX_RULE_BYTES, parse_rule
from ttprules.store import InvalidFile, RulesDirectoryMissing, current_revision, sync_directory

from .store_helpers import SHIPPED, SHIPPED_COUNT, copy_pack, retitle

pytestmark = pytest.mark.django_db

BROKEN = "rule_id: R0002\nrule_version: 1\nname: broken\napplies_to: [observed:command\nmatch: {}\n"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A copy of the shipped pack, synced once."""
    directory = copy_pack(tmp_path / "rules")
    sync_directory(directory)
    return directory


def rows() -> dict[str, Rule]:
    return {rule.rule_id: rule for rule in Rule.objects.all()}


def test_the_shipped_pack_loads_from_the_default_directory():
    report = sync_directory()  # STIGMEM_TTP_RULES_DIR defaults to ttprules/rules
    assert report.directory == str(SHIPPED)
    assert len(report.created) == SHIPPED_COUNT
    assert (report.updated, report.unchanged, report.removed, report.invalid) == ([], [], [], [])
    assert report.revision == current_revision() == 1
    stored = rows()
    assert len(stored) == SHIPPED_COUNT and all(rule.valid for rule in stored.values())
    rule = stored["R0001"]
    parsed = parse_rule((SHIPPED / "R0001.yaml").read_text(), "R0001.yaml").rule
    assert parsed is not None
    assert (rule.file_name, rule.rule_version, rule.name) == ("R0001.yaml", parsed.rule_version, parsed.name)
    assert (rule.errors, rule.warnings) == ([], [])
    assert rule.source == (SHIPPED / "R0001.yaml").read_text()
    assert rule.parsed == {
        "description": parsed.description,
        "applies_to": ["observed:command", "observed:process"],
        "emits": [{"tactic": "TA0002", "technique_id": "T1059", "sub_technique_id": "T1059.004", "confidence": 0.6}],
        "evidence_fields": ["entity", "value.v", "source"],
    }
    assert rule.loaded_at == rule.updated_at


def test_a_second_sync_of_an_unchanged_directory_changes_nothing(rules: Path):
    before = {r.rule_id: (r.updated_at, r.content_sha256) for r in rules_rows()}
    report = sync_directory(rules)
    assert len(report.unchanged) == SHIPPED_COUNT
    assert (report.created, report.updated, report.removed) == ([], [], [])
    assert not report.changed and report.revision == current_revision() == 1
    assert {r.rule_id: (r.updated_at, r.content_sha256) for r in rules_rows()} == before


def rules_rows() -> list[Rule]:
    return list(Rule.objects.order_by("rule_id"))


def test_a_file_saved_again_unchanged_is_no_change(rules: Path):
    path = rules / "R0005.yaml"
    path.write_bytes(path.read_bytes())
    os.utime(path, (1, 1))
    report = sync_directory(rules)
    assert not report.changed and current_revision() == 1


def test_an_edit_updates_exactly_that_rule_with_one_revision_bump(rules: Path):
    first = rows()["R0001"]
    retitle(rules / "R0001.yaml", "edited")
    report = sync_directory(rules)
    assert report.updated == ["R0001"]
    assert len(report.unchanged) == SHIPPED_COUNT - 1 and report.created == report.removed == []
    assert report.revision == current_revision() == 2
    rule = rows()["R0001"]
    assert rule.parsed["description"] == "edited"
    assert rule.source == (rules / "R0001.yaml").read_text()
    assert rule.content_sha256 != first.content_sha256
    assert rule.loaded_at == first.loaded_at and rule.updated_at > first.updated_at


def test_several_changes_in_one_sync_bump_the_revision_once(rules: Path):
    retitle(rules / "R0001.yaml", "edited")
    (rules / "R0002.yaml").unlink()
    (rules / "R0046.yaml").write_text((rules / "R0003.yaml").read_text().replace("R0003", "R0046"))
    report = sync_directory(rules)
    assert (report.created, report.updated, report.removed) == (["R0046"], ["R0001"], ["R0002"])
    assert report.revision == current_revision() == 2


def test_a_broken_file_is_stored_invalid_with_line_numbers_and_the_others_load(tmp_path: Path):
    directory = copy_pack(tmp_path / "rules")
    (directory / "R0002.yaml").write_text(BROKEN)
    report = sync_directory(directory)
    assert len(report.created) == SHIPPED_COUNT
    [problem] = report.invalid
    assert problem.file_name == "R0002.yaml" and problem.stored
    assert problem.errors[0].startswith("line 5: invalid YAML")
    stored = rows()
    assert sum(rule.valid for rule in stored.values()) == SHIPPED_COUNT - 1
    broken = stored["R0002"]
    assert not broken.valid and list(problem.errors) == broken.errors
    assert (broken.rule_version, broken.name, broken.parsed) == (None, "", None)
    assert broken.source == BROKEN

    # Still broken on the next sync: reported again, not changed.
    again = sync_directory(directory)
    assert [p.file_name for p in again.invalid] == ["R0002.yaml"] and not again.changed

    # Fixed: updated, valid.
    (directory / "R0002.yaml").write_text((SHIPPED / "R0002.yaml").read_text())
    fixed = sync_directory(directory)
    assert fixed.updated == ["R0002"] and fixed.invalid == []
    assert rows()["R0002"].valid and rows()["R0002"].errors == []


def test_schema_errors_and_warnings_are_stored_line_numbered(tmp_path: Path):
    directory = tmp_path / "rules"
    directory.mkdir()
    text = (SHIPPED / "R0001.yaml").read_text()
    (directory / "R0001.yaml").write_text(text.replace("rule_version: 1", "rule_version: 0").replace("name:", "nmae:"))
    report = sync_directory(directory)
    [problem] = report.invalid
    assert problem.errors == (
        "line 1: missing required key 'name'",
        "line 2: rule_version must be an integer from 1 to 2147483647, got 0",
        "line 3: unknown key 'nmae' in rule (allowed: rule_id, rule_version, name, description, applies_to, "
        "match, emits, evidence_fields)",
    )
    assert rows()["R0001"].errors == list(problem.errors)


def test_editor_swap_and_backup_files_and_other_names_are_ignored(rules: Path):
    text = (rules / "R0001.yaml").read_text()
    for name in (".R0001.yaml.swp", "R0001.yaml~", "#R0001.yaml#", "R0001.yaml.bak", ".#R0001.yaml", "R-1.yaml"):
        (rules / name).write_text(text)
    (rules / "notes.txt").write_text("not a rule")
    (rules / "R0999.yaml").mkdir()  # a directory with a rule-like name
    report = sync_directory(rules)
    assert not report.changed and report.invalid == []
    assert len(report.unchanged) == SHIPPED_COUNT and len(rows()) == SHIPPED_COUNT


def test_a_deleted_file_removes_its_rule(rules: Path):
    (rules / "R0007.yaml").unlink()
    report = sync_directory(rules)
    assert report.removed == ["R0007"] and report.revision == 2
    assert "R0007" not in rows() and len(rows()) == SHIPPED_COUNT - 1


def test_an_emptied_directory_removes_every_rule(rules: Path):
    for path in rules.iterdir():
        path.unlink()
    report = sync_directory(rules)
    assert len(report.removed) == SHIPPED_COUNT and not Rule.objects.exists()


def test_a_missing_directory_is_an_error_and_removes_nothing(rules: Path, tmp_path: Path):
    for missing in (tmp_path / "nowhere", rules / "R0001.yaml"):
        with pytest.raises(RulesDirectoryMissing, match="does not exist or is not a directory"):
            sync_directory(missing)
    assert len(rows()) == SHIPPED_COUNT and current_revision() == 1


def test_renaming_yaml_to_yml_keeps_the_rule_and_updates_its_file_name(rules: Path):
    (rules / "R0003.yaml").rename(rules / "R0003.yml")
    report = sync_directory(rules)
    assert (report.created, report.updated, report.removed) == ([], ["R0003"], [])
    assert rows()["R0003"].file_name == "R0003.yml" and rows()["R0003"].valid


def test_renaming_to_another_rule_id_replaces_the_row(rules: Path):
    (rules / "R0003.yaml").rename(rules / "R9000.yaml")
    report = sync_directory(rules)
    assert (report.created, report.removed) == (["R9000"], ["R0003"])
    [problem] = report.invalid
    assert problem.errors == ("line 1: rule_id 'R0003' must equal the file name stem 'R9000'",)
    assert not rows()["R9000"].valid and "R0003" not in rows()


def test_two_files_with_one_stem_the_first_by_name_is_the_rule(rules: Path):
    (rules / "R0004.yml").write_text(BROKEN)
    report = sync_directory(rules)
    assert report.invalid == [
        InvalidFile(
            "R0004.yml", ("line 1: rule id R0004 is already defined by R0004.yaml; this file is ignored",), stored=False
        )
    ]
    assert not report.changed and rows()["R0004"].file_name == "R0004.yaml"

    # The winner goes away: the other file is the rule now.
    (rules / "R0004.yaml").unlink()
    report = sync_directory(rules)
    assert report.updated == ["R0004"] and report.removed == []
    assert rows()["R0004"].file_name == "R0004.yml" and not rows()["R0004"].valid


def test_a_stem_longer_than_a_rule_id_is_reported_not_stored(tmp_path: Path):
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / f"{'R' * 65}.yaml").write_text(BROKEN)
    report = sync_directory(directory)
    assert [(p.stored, p.errors[0]) for p in report.invalid] == [
        (False, "line 1: the file name stem is longer than 64 characters, the rule id limit")
    ]
    assert not Rule.objects.exists() and current_revision() == 0


def test_unreadable_bytes_are_reported_not_fatal(tmp_path: Path):
    directory = copy_pack(tmp_path / "rules", "R0001")
    (directory / "R0002.yaml").write_bytes(b"rule_id: R0002\nname: caf\xe9\n")
    (directory / "R0003.yaml").write_bytes(b"rule_id: R0003\nname: a\x00b\n")
    (directory / "R0004.yaml").write_bytes(b"#" * (MAX_RULE_BYTES + 1))
    report = sync_directory(directory)
    assert report.created == ["R0001", "R0002", "R0003", "R0004"]
    errors = {p.file_name: p.errors for p in report.invalid}
    assert errors["R0002.yaml"] == ("line 2: the file is not UTF-8 text (byte 24)",)
    assert errors["R0003.yaml"][0].startswith("line 2: invalid YAML: unacceptable character #x0000")
    assert errors["R0004.yaml"] == ("line 1: rule file exceeds 256 KiB",)
    stored = rows()
    assert stored["R0002"].source == "rule_id: R0002\nname: caf\ufffd\n"
    assert stored["R0003"].source == "rule_id: R0003\nname: a\ufffdb\n"  # PostgreSQL stores no NUL
    assert stored["R0004"].content_sha256 != stored["R0003"].content_sha256 and stored["R0004"].source == ""
    assert stored["R0001"].valid


def test_a_new_validator_or_catalogue_validates_unchanged_files_again(rules: Path, monkeypatch):
    # Same verdicts under the new validator: rows refreshed silently, no change, no bump.
    monkeypatch.setattr(store, "parser_fingerprint", lambda: "f" * 64)
    report = sync_directory(rules)
    assert not report.changed and current_revision() == 1
    assert set(Rule.objects.values_list("parser_sha256", flat=True)) == {"f" * 64}

    # A validator that now warns about R0001: updated once, then current again.
    def stricter(text: str, filename: str):
        result = parse_rule(text, filename)
        if filename == "R0001.yaml":
            result.warnings.append(store.RuleError(3, "new warning"))
        return result

    monkeypatch.setattr(store, "parser_fingerprint", lambda: "e" * 64)
    monkeypatch.setattr(store, "parse_rule", stricter)
    report = sync_directory(rules)
    assert report.updated == ["R0001"] and report.revision == 2
    assert rows()["R0001"].warnings == ["line 3: new warning"]
    assert not sync_directory(rules).changed


def test_a_sync_that_fails_midway_changes_nothing(rules: Path, monkeypatch):
    for rule_id in ("R0001", "R0002"):
        retitle(rules / f"{rule_id}.yaml", "edited")
    (rules / "R0003.yaml").unlink()
    before = list(Rule.objects.order_by("rule_id").values_list("rule_id", "content_sha256"))
    saves: list[str] = []

    def second_save_fails(self, *args, **kwargs):
        saves.append(self.rule_id)
        if len(saves) == 2:
            raise RuntimeError("disk full")
        return original(self, *args, **kwargs)

    original = Rule.save
    monkeypatch.setattr(Rule, "save", second_save_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        sync_directory(rules)
    assert saves == ["R0001", "R0002"]
    assert list(Rule.objects.order_by("rule_id").values_list("rule_id", "content_sha256")) == before
    assert current_revision() == 1


def reloaded_events() -> list[tuple[str, dict]]:
    from stigmem.models import Event

    rows = Event.objects.filter(topic__startswith="ttp.rule.reloaded.").order_by("seq")
    return [(event.topic, event.payload) for event in rows]


def test_each_created_updated_or_removed_rule_gets_one_reloaded_event(rules: Path):
    assert len(reloaded_events()) == SHIPPED_COUNT  # the first sync created every rule
    retitle(rules / "R0001.yaml", "edited")
    (rules / "R0002.yaml").unlink()
    (rules / "R0046.yaml").write_text(BROKEN.replace("R0002", "R0046"))
    before = len(reloaded_events())

    sync_directory(rules)

    new = reloaded_events()[before:]
    assert [topic for topic, _ in new] == [
        "ttp.rule.reloaded.R0001",
        "ttp.rule.reloaded.R0002",
        "ttp.rule.reloaded.R0046",
    ]
    updated, removed, created = (payload for _, payload in new)
    assert updated == {
        "rule_id": "R0001",
        "change": "updated",
        "rule_version": rows()["R0001"].rule_version,
        "valid": True,
        "errors": [],
        "revision": 2,
    }
    assert removed == {
        "rule_id": "R0002",
        "change": "removed",
        "rule_version": None,
        "valid": None,
        "errors": [],
        "revision": 2,
    }
    assert (created["change"], created["valid"], created["rule_version"]) == ("created", False, None)
    assert created["errors"] and created["errors"][0].startswith("line ")


def test_an_unchanged_sync_announces_nothing(rules: Path):
    before = reloaded_events()
    sync_directory(rules)
    assert reloaded_events() == before


def test_reloaded_events_go_to_the_operators_tenant(rules: Path, settings):
    from stigmem.models import Event

    assert set(Event.objects.filter(topic__startswith="ttp.rule.reloaded.").values_list("tenant", flat=True)) == {
        settings.STIGMEM_DEFAULT_TENANT
    }
