"""The bundled ATT&CK catalogue: pinned version, lookups, revoked/deprecated flags, data integrity."""

from __future__ import annotations

import ttprules.attack as attack
from ttprules.attack import catalogue


def test_version_is_pinned():
    assert catalogue().version == "18.1"


def test_technique_lookup():
    technique = catalogue().technique("T1059")
    assert technique is not None
    assert technique.name == "Command and Scripting Interpreter"
    assert "TA0002" in technique.tactics
    assert technique.is_subtechnique is False
    assert technique.parent is None
    assert (technique.revoked, technique.deprecated) == (False, False)


def test_subtechnique_knows_its_parent():
    sub = catalogue().technique("T1059.004")
    assert sub is not None
    assert sub.name == "Unix Shell"
    assert sub.is_subtechnique is True
    assert sub.parent == "T1059"
    assert sub.tactics == frozenset({"TA0002"})


def test_technique_with_several_tactics():
    valid_accounts = catalogue().technique("T1078")
    assert valid_accounts is not None
    assert valid_accounts.tactics == frozenset({"TA0001", "TA0003", "TA0004", "TA0005"})


def test_revoked_technique_names_its_replacement():
    powershell = catalogue().technique("T1086")
    assert powershell is not None
    assert powershell.revoked is True
    assert powershell.revoked_by == "T1059.001"


def test_deprecated_technique():
    scripting = catalogue().technique("T1064")
    assert scripting is not None
    assert scripting.deprecated is True
    assert scripting.revoked is False


def test_tactic_lookup():
    tactic = catalogue().tactic("TA0002")
    assert tactic is not None
    assert (tactic.id, tactic.name, tactic.shortname) == ("TA0002", "Execution", "execution")


def test_unknown_and_malformed_ids_are_none():
    cat = catalogue()
    assert cat.technique("T9999") is None
    assert cat.technique("t1059") is None  # ids are case-sensitive
    assert cat.technique(1059) is None  # type: ignore[arg-type]
    assert cat.tactic("TA9999") is None
    assert cat.tactic(None) is None  # type: ignore[arg-type]


def test_tactics_in_matrix_order():
    ids = [t.id for t in catalogue().tactics()]
    assert len(ids) == 14
    assert ids[0] == "TA0043"  # Reconnaissance is the matrix's first column
    assert ids[-1] == "TA0040"  # Impact its last


def test_catalogue_is_loaded_once_and_exposed_as_CATALOGUE():
    assert catalogue() is catalogue()
    assert attack.CATALOGUE is catalogue()


def test_data_integrity():
    cat = catalogue()
    tactic_ids = {t.id for t in cat.tactics()}
    techniques = cat.techniques()
    assert len(techniques) == len(cat) > 800
    for technique in techniques:
        assert cat.technique(technique.id) is technique
        assert technique.tactics and technique.tactics <= tactic_ids, technique.id
        if technique.is_subtechnique:
            parent = cat.technique(technique.parent or "")
            assert parent is not None and not parent.is_subtechnique, technique.id
        if technique.revoked_by is not None:
            assert cat.technique(technique.revoked_by) is not None, technique.id
