"""The bundled, version-pinned MITRE ATT&CK Enterprise catalogue (tactics, techniques, sub-techniques).

The data is ``data/attack-enterprise.json``, generated offline by ``data/generate_attack.py``; rule
validation and tags refer to it, and every tag records ``Catalogue.version`` so a tag stays
interpretable after the catalogue moves to a newer ATT&CK release.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

DATA_PATH = Path(__file__).parent / "data" / "attack-enterprise.json"

if TYPE_CHECKING:
    CATALOGUE: Catalogue  # provided lazily by the module __getattr__ below


@dataclass(frozen=True, slots=True)
class Tactic:
    id: str  # TA0002
    name: str  # Execution
    shortname: str  # execution (the STIX kill-chain phase name)


@dataclass(frozen=True, slots=True)
class Technique:
    id: str  # T1059 or T1059.004
    name: str
    tactics: frozenset[str]  # TA ids
    is_subtechnique: bool
    parent: str | None  # T1059 for T1059.004; None for a technique
    revoked: bool
    deprecated: bool
    revoked_by: str | None = None  # the technique that replaced a revoked one, when ATT&CK names it


class Catalogue:
    """Read-only lookups by ATT&CK id. Ids are case-sensitive, as ATT&CK writes them."""

    def __init__(self, version: str, tactics: Mapping[str, Tactic], techniques: Mapping[str, Technique]) -> None:
        self.version = version
        self._tactics = dict(tactics)
        self._techniques = dict(techniques)

    def technique(self, tid: str) -> Technique | None:
        return self._techniques.get(tid) if isinstance(tid, str) else None

    def tactic(self, taid: str) -> Tactic | None:
        return self._tactics.get(taid) if isinstance(taid, str) else None

    def techniques(self) -> tuple[Technique, ...]:
        """All techniques and sub-techniques, revoked and deprecated ones included, by id."""
        return tuple(self._techniques.values())

    def tactics(self) -> tuple[Tactic, ...]:
        """All tactics in the Enterprise matrix's column order."""
        return tuple(self._tactics.values())

    def __len__(self) -> int:
        return len(self._techniques)


def load(path: Path) -> Catalogue:
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    tactics = {taid: Tactic(taid, name, shortname) for taid, (name, shortname) in raw["tactics"].items()}
    techniques = {}
    for tid, entry in raw["techniques"].items():
        is_sub = "." in tid
        techniques[tid] = Technique(
            id=tid,
            name=entry["name"],
            tactics=frozenset(entry["tactics"]),
            is_subtechnique=is_sub,
            parent=tid.split(".", 1)[0] if is_sub else None,
            revoked=entry.get("revoked", False),
            deprecated=entry.get("deprecated", False),
            revoked_by=entry.get("revoked_by"),
        )
    return Catalogue(raw["attack_version"], tactics, techniques)


@functools.cache
def catalogue() -> Catalogue:
    """The bundled catalogue, read from disk on first use and shared afterwards."""
    return load(DATA_PATH)


def __getattr__(name: str) -> Any:
    # ``CATALOGUE`` is resolved lazily (PEP 562) so importing this module costs no file read.
    if name == "CATALOGUE":
        return catalogue()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
