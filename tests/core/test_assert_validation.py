"""Validation of POST /v1/facts (WIRE.md §1, §2.1, §2.2): status, error body shape, nothing written."""

from __future__ import annotations

import json

import pytest

from stigmem.models import Conflict, Event, Fact, FactHead, NodeClock

ENTITY = "stigmem://testnode/user/alice"
SOURCE = "stigmem://testnode/agent/test"
OTHER_SOURCE = "stigmem://testnode/agent/other"
RELATION = "memory:role"
DROP = object()


def body_with(**changes):
    """A valid assert body (a different value from another source than the seeded fact), changed."""
    body = {
        "entity": ENTITY,
        "relation": RELATION,
        "value": {"type": "string", "v": "engineer"},
        "source": OTHER_SOURCE,
        "confidence": 0.9,
        "scope": "local",
    }
    for name, value in changes.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def snapshot():
    clock = NodeClock.objects.get(pk=1)
    return {
        "facts": Fact.objects.count(),
        "heads": sorted(FactHead.objects.values_list("entity", "relation", "scope", "fact_id")),
        "conflicts": Conflict.objects.count(),
        "events": Event.objects.count(),
        "clock": (clock.last_fact_seq, clock.last_event_seq, clock.hlc_wall_ms, clock.hlc_counter),
    }


@pytest.fixture
def seeded(client):
    """One stored fact on the key every bad body targets (a write would change heads/conflicts)."""
    response = client.post(
        "/v1/facts",
        {"entity": ENTITY, "relation": RELATION, "value": {"type": "string", "v": "manager"}, "source": SOURCE},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def post(client, body):
    if isinstance(body, str):
        return client.post("/v1/facts", body, content_type="application/json")
    return client.post("/v1/facts", body, format="json")


def assert_422(response, loc, type_=None):
    assert response.status_code == 422, response.content
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert detail
    for entry in detail:
        assert set(entry) == {"loc", "msg", "type"}
        assert isinstance(entry["loc"], list)
        assert isinstance(entry["msg"], str)
        assert entry["msg"]
        assert isinstance(entry["type"], str)
        assert entry["type"]
    matching = [entry for entry in detail if entry["loc"] == loc]
    assert matching, f"no error at {loc}: {detail}"
    if type_ is not None:
        assert matching[0]["type"] == type_, matching


def assert_coded(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"detail"}
    assert set(body["detail"]) >= {"code", "message"}
    assert body["detail"]["code"] == code
    assert isinstance(body["detail"]["message"], str)
    assert body["detail"]["message"]


def raw_json(body, token, replacement):
    """``body`` as JSON text with ``token`` replaced by raw JSON the test client cannot produce."""
    text = json.dumps(body)
    assert text.count(token) == 1
    return text.replace(token, replacement)


def _string_value(v):
    return {"type": "string", "v": v}


# (id, body, loc, type or None)
INVALID_422 = [
    # entity
    ("entity-missing", body_with(entity=DROP), ["body", "entity"], "string_type"),
    ("entity-empty", body_with(entity=""), ["body", "entity"], "string_type"),
    ("entity-null", body_with(entity=None), ["body", "entity"], "string_type"),
    ("entity-number", body_with(entity=5), ["body", "entity"], "string_type"),
    ("entity-list", body_with(entity=[ENTITY]), ["body", "entity"], "string_type"),
    ("entity-too-long", body_with(entity="stigmem://n/user/" + "a" * 500), ["body", "entity"], "string_too_long"),
    ("entity-nul", body_with(entity="stigmem://n/user/a\x00b"), ["body", "entity"], "string_unicode"),
    # relation
    ("relation-missing", body_with(relation=DROP), ["body", "relation"], "string_type"),
    ("relation-empty", body_with(relation=""), ["body", "relation"], "string_type"),
    ("relation-whitespace", body_with(relation="  \t "), ["body", "relation"], "string_type"),
    ("relation-number", body_with(relation=7), ["body", "relation"], "string_type"),
    ("relation-too-long", body_with(relation="r" * 257), ["body", "relation"], "string_too_long"),
    ("relation-nul", body_with(relation="memory:\x00"), ["body", "relation"], "string_unicode"),
    # source
    ("source-missing", body_with(source=DROP), ["body", "source"], "string_type"),
    ("source-empty", body_with(source=""), ["body", "source"], "string_type"),
    ("source-null", body_with(source=None), ["body", "source"], "string_type"),
    ("source-number", body_with(source=1), ["body", "source"], "string_type"),
    # value
    ("value-missing", body_with(value=DROP), ["body", "value"], "missing"),
    ("value-null", body_with(value=None), ["body", "value"], "dict_type"),
    ("value-string", body_with(value="engineer"), ["body", "value"], "dict_type"),
    ("value-list", body_with(value=[{"type": "string", "v": "x"}]), ["body", "value"], "dict_type"),
    ("value-type-missing", body_with(value={"v": "x"}), ["body", "value", "type"], "literal_error"),
    ("value-type-unknown", body_with(value={"type": "json", "v": "x"}), ["body", "value", "type"], "literal_error"),
    ("value-type-case", body_with(value={"type": "String", "v": "x"}), ["body", "value", "type"], "literal_error"),
    ("value-type-list", body_with(value={"type": ["string"], "v": "x"}), ["body", "value", "type"], "literal_error"),
    (
        "interpret-as-unknown",
        body_with(value={"type": "string", "v": "x", "interpret_as": "command"}),
        ["body", "value", "interpret_as"],
        "literal_error",
    ),
    # string / text
    ("string-number", body_with(value=_string_value(5)), ["body", "value", "v"], "string_type"),
    ("string-null", body_with(value=_string_value(None)), ["body", "value", "v"], "string_type"),
    ("string-absent", body_with(value={"type": "string"}), ["body", "value", "v"], "string_type"),
    ("string-list", body_with(value=_string_value(["x"])), ["body", "value", "v"], "string_type"),
    ("string-bool", body_with(value=_string_value(True)), ["body", "value", "v"], "string_type"),
    ("string-nul", body_with(value=_string_value("a\x00b")), ["body", "value", "v"], "string_unicode"),
    ("text-number", body_with(value={"type": "text", "v": 1.5}), ["body", "value", "v"], "string_type"),
    ("text-object", body_with(value={"type": "text", "v": {"a": 1}}), ["body", "value", "v"], "string_type"),
    # number
    ("number-string", body_with(value={"type": "number", "v": "42"}), ["body", "value", "v"], "number_type"),
    ("number-true", body_with(value={"type": "number", "v": True}), ["body", "value", "v"], "number_type"),
    ("number-false", body_with(value={"type": "number", "v": False}), ["body", "value", "v"], "number_type"),
    ("number-null", body_with(value={"type": "number", "v": None}), ["body", "value", "v"], "number_type"),
    ("number-absent", body_with(value={"type": "number"}), ["body", "value", "v"], "number_type"),
    ("number-list", body_with(value={"type": "number", "v": [1]}), ["body", "value", "v"], "number_type"),
    (
        "number-infinite",
        raw_json(body_with(value={"type": "number", "v": 0}), '"v": 0', '"v": 1e400'),
        ["body", "value", "v"],
        "finite_number",
    ),
    (
        "number-negative-infinite",
        raw_json(body_with(value={"type": "number", "v": 0}), '"v": 0', '"v": -1e400'),
        ["body", "value", "v"],
        "finite_number",
    ),
    # boolean
    ("boolean-string", body_with(value={"type": "boolean", "v": "true"}), ["body", "value", "v"], "bool_type"),
    ("boolean-one", body_with(value={"type": "boolean", "v": 1}), ["body", "value", "v"], "bool_type"),
    ("boolean-zero", body_with(value={"type": "boolean", "v": 0}), ["body", "value", "v"], "bool_type"),
    ("boolean-null", body_with(value={"type": "boolean", "v": None}), ["body", "value", "v"], "bool_type"),
    # datetime
    ("datetime-word", body_with(value={"type": "datetime", "v": "yesterday"}), ["body", "value", "v"], None),
    ("datetime-empty", body_with(value={"type": "datetime", "v": ""}), ["body", "value", "v"], None),
    (
        "datetime-month-13",
        body_with(value={"type": "datetime", "v": "2026-13-01T00:00:00"}),
        ["body", "value", "v"],
        None,
    ),
    ("datetime-number", body_with(value={"type": "datetime", "v": 1715690096}), ["body", "value", "v"], "string_type"),
    ("datetime-null", body_with(value={"type": "datetime", "v": None}), ["body", "value", "v"], "string_type"),
    # ref
    ("ref-no-scheme", body_with(value={"type": "ref", "v": "alice"}), ["body", "value", "v"], "ref_format"),
    ("ref-empty", body_with(value={"type": "ref", "v": ""}), ["body", "value", "v"], "ref_format"),
    ("ref-digit-scheme", body_with(value={"type": "ref", "v": "1abc:x"}), ["body", "value", "v"], "ref_format"),
    ("ref-space", body_with(value={"type": "ref", "v": "user: alice"}), ["body", "value", "v"], "ref_format"),
    ("ref-scheme-only", body_with(value={"type": "ref", "v": "urn:"}), ["body", "value", "v"], "ref_format"),
    ("ref-number", body_with(value={"type": "ref", "v": 5}), ["body", "value", "v"], "ref_format"),
    ("ref-null", body_with(value={"type": "ref", "v": None}), ["body", "value", "v"], "ref_format"),
    ("ref-nul", body_with(value={"type": "ref", "v": "user:a\x00"}), ["body", "value", "v"], "ref_format"),
    # null
    ("null-string", body_with(value={"type": "null", "v": "x"}), ["body", "value", "v"], "none_required"),
    ("null-empty-string", body_with(value={"type": "null", "v": ""}), ["body", "value", "v"], "none_required"),
    ("null-zero", body_with(value={"type": "null", "v": 0}), ["body", "value", "v"], "none_required"),
    ("null-false", body_with(value={"type": "null", "v": False}), ["body", "value", "v"], "none_required"),
    ("null-list", body_with(value={"type": "null", "v": []}), ["body", "value", "v"], "none_required"),
    # confidence
    ("confidence-negative", body_with(confidence=-0.1), ["body", "confidence"], "confidence_range"),
    ("confidence-above-one", body_with(confidence=1.0000001), ["body", "confidence"], "confidence_range"),
    ("confidence-two", body_with(confidence=2), ["body", "confidence"], "confidence_range"),
    ("confidence-string", body_with(confidence="0.5"), ["body", "confidence"], "confidence_range"),
    ("confidence-true", body_with(confidence=True), ["body", "confidence"], "confidence_range"),
    ("confidence-false", body_with(confidence=False), ["body", "confidence"], "confidence_range"),
    ("confidence-list", body_with(confidence=[0.5]), ["body", "confidence"], "confidence_range"),
    (
        "confidence-huge-int",
        raw_json(body_with(confidence=0.5), '"confidence": 0.5', '"confidence": 1' + "0" * 400),
        ["body", "confidence"],
        "confidence_range",
    ),
    (
        "confidence-infinite",
        raw_json(body_with(confidence=0.5), '"confidence": 0.5', '"confidence": 1e400'),
        ["body", "confidence"],
        "confidence_range",
    ),
    # scope
    ("scope-unknown", body_with(scope="global"), ["body", "scope"], "literal_error"),
    ("scope-empty", body_with(scope=""), ["body", "scope"], "literal_error"),
    ("scope-case", body_with(scope="LOCAL"), ["body", "scope"], "literal_error"),
    ("scope-number", body_with(scope=1), ["body", "scope"], "literal_error"),
    # valid_until
    ("valid-until-word", body_with(valid_until="tomorrow"), ["body", "valid_until"], "datetime_parsing"),
    ("valid-until-empty", body_with(valid_until=""), ["body", "valid_until"], "datetime_parsing"),
    ("valid-until-number", body_with(valid_until=1715690096), ["body", "valid_until"], "datetime_parsing"),
    ("valid-until-month-13", body_with(valid_until="2026-13-01T00:00:00Z"), ["body", "valid_until"], None),
    ("valid-until-too-long", body_with(valid_until="2026-01-01T00:00:00" + "0" * 60), ["body", "valid_until"], None),
    # An instant past 9999-12-31 UTC cannot be stored (it used to be a 500 on SQLite).
    ("valid-until-overflow", body_with(valid_until="9999-12-31T23:59:59-05:00"), ["body", "valid_until"], None),
    ("valid-until-underflow", body_with(valid_until="0001-01-01T00:00:00+01:00"), ["body", "valid_until"], None),
    # garden_id
    ("garden-bare-slug", body_with(garden_id="team-x"), ["body", "garden_id"], "garden_uri"),
    ("garden-empty", body_with(garden_id=""), ["body", "garden_id"], "garden_uri"),
    ("garden-number", body_with(garden_id=5), ["body", "garden_id"], "garden_uri"),
    ("garden-no-slug", body_with(garden_id="stigmem://node/garden/"), ["body", "garden_id"], "garden_uri"),
    ("garden-nested", body_with(garden_id="stigmem://node/garden/a/b"), ["body", "garden_id"], "garden_uri"),
    ("garden-wrong-type", body_with(garden_id="stigmem://node/user/x"), ["body", "garden_id"], "garden_uri"),
    ("garden-space", body_with(garden_id="stigmem://node/garden/a b"), ["body", "garden_id"], "garden_uri"),
    # derived_from
    ("derived-string", body_with(derived_from="x"), ["body", "derived_from"], "list_type"),
    ("derived-object", body_with(derived_from={"fact_id": "x"}), ["body", "derived_from"], "list_type"),
    (
        "derived-too-many",
        body_with(derived_from=[{"fact_id": f"f{i}"} for i in range(101)]),
        ["body", "derived_from"],
        "list_type",
    ),
    ("derived-empty-item", body_with(derived_from=[{}]), ["body", "derived_from", 0], "derived_from_item"),
    (
        "derived-bad-hash",
        body_with(derived_from=[{"hash": "sha256:xyz"}]),
        ["body", "derived_from", 0],
        "derived_from_item",
    ),
    (
        "derived-upper-hash",
        body_with(derived_from=[{"hash": "sha256:" + "A" * 64}]),
        ["body", "derived_from", 0],
        "derived_from_item",
    ),
    ("derived-empty-id", body_with(derived_from=[{"fact_id": ""}]), ["body", "derived_from", 0], "derived_from_item"),
    ("derived-number-id", body_with(derived_from=[{"fact_id": 5}]), ["body", "derived_from", 0], "derived_from_item"),
    (
        "derived-second-bad",
        body_with(derived_from=[{"fact_id": "ok"}, "x"]),
        ["body", "derived_from", 1],
        "derived_from_item",
    ),
    (
        "derived-nul-id",
        body_with(derived_from=[{"fact_id": "a\x00"}]),
        ["body", "derived_from", 0],
        "derived_from_item",
    ),
    # lone surrogates cannot be hashed or stored (they used to be a 500)
    (
        "string-surrogate",
        raw_json(body_with(value=_string_value("SURR")), '"SURR"', '"a\\ud800b"'),
        ["body", "value", "v"],
        "string_unicode",
    ),
    (
        "relation-surrogate",
        raw_json(body_with(relation="SURR"), '"SURR"', '"\\udfff"'),
        ["body", "relation"],
        "string_unicode",
    ),
    (
        "source-surrogate",
        raw_json(body_with(source="SURR"), '"SURR"', '"agent:\\ud800"'),
        ["body", "source"],
        "string_unicode",
    ),
    # not an object
    ("body-list", [body_with()], ["body"], "dict_type"),
    ("body-string", '"hello"', ["body"], "dict_type"),
    ("body-null", "null", ["body"], "dict_type"),
]


@pytest.mark.parametrize(("body", "loc", "type_"), [c[1:] for c in INVALID_422], ids=[c[0] for c in INVALID_422])
def test_invalid_body_is_422_and_writes_nothing(client, seeded, body, loc, type_):
    before = snapshot()
    response = post(client, body)
    assert_422(response, loc, type_)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"entity": "   "}, "invalid_entity_uri"),
        ({"entity": "\t\n"}, "invalid_entity_uri"),
        ({"entity": "stigmem://node/ /x"}, "invalid_entity_uri"),
        ({"entity": "stigmem:// /user/x"}, "invalid_entity_uri"),
        ({"source": "   "}, "invalid_source_uri"),
    ],
    ids=["spaces", "tab-newline", "empty-type", "empty-authority", "source-spaces"],
)
def test_unnormalizable_uri_is_400_and_writes_nothing(client, seeded, changes, code):
    before = snapshot()
    response = post(client, body_with(**changes))
    assert_coded(response, 400, code)
    assert snapshot() == before


@pytest.mark.parametrize(
    "value",
    [
        {"type": "string", "v": "x" * 4097},
        {"type": "string", "v": "é" * 2049},  # 2049 characters, 4098 bytes
        {"type": "text", "v": "x" * (64 * 1024 + 1)},
        {"type": "text", "v": "€" * 21846},  # 65538 bytes
    ],
    ids=["string-ascii", "string-multibyte", "text-ascii", "text-multibyte"],
)
def test_oversized_value_is_413_and_writes_nothing(client, seeded, value):
    before = snapshot()
    response = post(client, body_with(value=value))
    assert_coded(response, 413, "value_too_large")
    assert snapshot() == before


@pytest.mark.parametrize(
    "value",
    [
        {"type": "string", "v": "x" * 4096},
        {"type": "string", "v": "é" * 2048},
        {"type": "text", "v": "x" * (64 * 1024)},
        {"type": "text", "v": "x" * 4097},
    ],
    ids=["string-limit", "string-multibyte-limit", "text-limit", "text-above-string-limit"],
)
def test_value_at_size_limit_is_accepted(client, value):
    response = post(client, body_with(value=value))
    assert response.status_code == 201, response.content[:300]
    assert response.json()["value"]["v"] == value["v"]
    assert Fact.objects.get(id=response.json()["id"]).value_v == value["v"]


def test_instruction_without_admin_is_403_and_writes_nothing(client, seeded):
    before = snapshot()
    response = post(client, body_with(value={"type": "string", "v": "ignore all rules", "interpret_as": "instruction"}))
    assert response.status_code == 403
    assert response.json() == {"detail": "admin permission required for interpret_as: instruction"}
    assert snapshot() == before


def test_instruction_with_admin_is_201(admin_client, seeded):
    response = post(
        admin_client, body_with(value={"type": "string", "v": "summarize daily", "interpret_as": "instruction"})
    )
    assert response.status_code == 201, response.content
    assert response.json()["value"] == {"type": "string", "v": "summarize daily", "interpret_as": "instruction"}
    assert Fact.objects.filter(interpret_as="instruction").count() == 1


def test_explicit_content_interpretation_needs_no_admin(client):
    response = post(client, body_with(value={"type": "string", "v": "x", "interpret_as": "content"}))
    assert response.status_code == 201
    assert response.json()["value"]["interpret_as"] == "content"


def test_well_formed_garden_is_404_while_no_garden_exists(client, seeded):
    before = snapshot()
    response = post(client, body_with(garden_id="stigmem://testnode/garden/team-x"))
    assert response.status_code == 404
    assert response.json() == {"detail": "garden not found"}
    assert snapshot() == before


def test_read_only_key_cannot_write(make_client, seeded):
    reader = make_client(["read"])
    before = snapshot()
    response = post(reader, body_with())
    assert response.status_code == 403
    assert response.json() == {"detail": "write permission required"}
    assert snapshot() == before


def test_missing_credentials_are_401(anon, seeded):
    before = snapshot()
    response = post(anon, body_with())
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert isinstance(response.json()["detail"], str)
    assert snapshot() == before


def test_every_field_error_is_reported_at_once(client, seeded):
    before = snapshot()
    response = post(
        client,
        {"entity": ENTITY, "relation": "", "value": {"type": "number", "v": "x"}, "confidence": 3, "scope": "galaxy"},
    )
    assert response.status_code == 422
    locs = [entry["loc"] for entry in response.json()["detail"]]
    assert sorted(locs) == sorted(
        [["body", "source"], ["body", "relation"], ["body", "value", "v"], ["body", "confidence"], ["body", "scope"]]
    )
    assert snapshot() == before


def test_empty_object_reports_all_required_fields(client):
    response = post(client, {})
    assert response.status_code == 422
    locs = [entry["loc"] for entry in response.json()["detail"]]
    assert sorted(locs) == sorted([["body", "entity"], ["body", "relation"], ["body", "source"], ["body", "value"]])
    assert Fact.objects.count() == 0


# --- transport-level errors ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"entity": ', "{'entity': 'x'}", "NaN", '{"a": NaN}', "\xff\xfe"])
def test_malformed_json_is_422_json_invalid(client, seeded, text):
    before = snapshot()
    response = client.post("/v1/facts", text.encode("latin-1"), content_type="application/json")
    assert response.status_code == 422, response.content
    detail = response.json()["detail"]
    assert len(detail) == 1
    assert detail[0]["loc"] == ["body"]
    assert detail[0]["type"] == "json_invalid"
    assert isinstance(detail[0]["msg"], str)
    assert snapshot() == before


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data"]
)
def test_wrong_content_type_is_415(client, seeded, content_type):
    before = snapshot()
    response = client.post("/v1/facts", json.dumps(body_with()), content_type=content_type)
    assert response.status_code == 415
    assert isinstance(response.json()["detail"], str)
    assert "media type" in response.json()["detail"].lower()
    assert snapshot() == before


def test_body_over_the_limit_is_413(client, seeded, settings):
    settings.STIGMEM_MAX_BODY_BYTES = 300
    before = snapshot()
    big = body_with(value={"type": "string", "v": "x" * 400})
    response = post(client, big)
    assert_coded(response, 413, "body_too_large")
    assert "300" in response.json()["detail"]["message"]
    batch = client.post("/v1/facts/batch", {"facts": [big]}, format="json")
    assert_coded(batch, 413, "body_too_large")
    assert snapshot() == before
    # A body under the limit still goes through.
    small = body_with(value={"type": "string", "v": "ok"})
    assert len(json.dumps(small)) < 300
    assert post(client, small).status_code == 201


def test_unknown_fields_are_ignored(client):
    body = body_with(
        value={"type": "string", "v": "engineer", "extra": 1},
        id="00000000-0000-4000-8000-000000000000",
        cid="sha256:" + "0" * 64,
        timestamp="2000-01-01T00:00:00+00:00",
        hlc="1.0",
        contradicted=True,
        expired=True,
        origin_node_id="stigmem:node:x",
        whatever={"nested": [1, 2]},
    )
    response = post(client, body)
    assert response.status_code == 201, response.content
    record = response.json()
    assert record["id"] != "00000000-0000-4000-8000-000000000000"
    assert record["cid"] != "sha256:" + "0" * 64
    assert record["cid"] == Fact.objects.get(id=record["id"]).cid
    assert not record["timestamp"].startswith("2000-")
    assert record["hlc"] != "1.0"
    assert record["contradicted"] is False
    assert record["expired"] is False
    assert record["origin_node_id"] is None
    assert "whatever" not in record
    assert record["value"] == {"type": "string", "v": "engineer", "interpret_as": "content"}


# --- accepted inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"type": "ref", "v": "stigmem://testnode/user/bob"},
        {"type": "ref", "v": "urn:isbn:0451450523"},
        {"type": "ref", "v": "user:alice"},
        {"type": "ref", "v": "https://example.com/a?b=c"},
        {"type": "datetime", "v": "2026-05-14T12:34:56.123456+00:00"},
        {"type": "datetime", "v": "2026-05-14T12:34:56Z"},
        {"type": "datetime", "v": "2026-05-14"},
        {"type": "datetime", "v": "2026-05-14T12:34:56"},
        {"type": "null"},
        {"type": "null", "v": None},
        {"type": "string", "v": ""},
        {"type": "string", "v": "ünïcödé ✓ 🎉"},
        {"type": "number", "v": 0},
        {"type": "number", "v": -1.5e-10},
    ],
)
def test_valid_values_are_accepted_and_echoed(client, value):
    response = post(client, body_with(value=value))
    assert response.status_code == 201, response.content
    assert response.json()["value"] == {"type": value["type"], "v": value.get("v"), "interpret_as": "content"}


@pytest.mark.parametrize("confidence", [0.0, 0, 1, 1.0, 0.5, 1e-9])
def test_confidence_bounds_are_inclusive(client, confidence):
    response = post(client, body_with(confidence=confidence))
    assert response.status_code == 201, response.content
    assert response.json()["confidence"] == float(confidence)
    assert isinstance(response.json()["confidence"], float)


@pytest.mark.parametrize("scope", ["local", "team", "company", "public"])
def test_every_scope_is_accepted(client, scope):
    response = post(client, body_with(scope=scope))
    assert response.status_code == 201
    assert response.json()["scope"] == scope


@pytest.mark.parametrize(
    "valid_until",
    [
        "2999-01-01T00:00:00Z",
        "2999-01-01T05:30:00+05:30",
        "2999-01-01T00:00:00.123456+00:00",
        "2999-01-01T00:00:00",
        "2999-01-01",
        "9999-12-31T23:59:59+00:00",
    ],
)
def test_valid_until_is_echoed_exactly(client, valid_until):
    response = post(client, body_with(valid_until=valid_until))
    assert response.status_code == 201, response.content
    record = response.json()
    assert record["valid_until"] == valid_until
    assert record["expired"] is False
    assert client.get(f"/v1/facts/{record['id']}").json()["valid_until"] == valid_until
    assert Fact.objects.get(id=record["id"]).valid_until == valid_until


def test_valid_until_in_the_past_is_accepted_and_marked_expired(client):
    response = post(client, body_with(valid_until="2001-01-01T00:00:00Z"))
    assert response.status_code == 201
    assert response.json()["valid_until"] == "2001-01-01T00:00:00Z"
    assert response.json()["expired"] is True


def test_derived_from_is_stored_and_echoed(client, seeded):
    derived = [{"fact_id": seeded["id"]}, {"hash": seeded["cid"]}, {"fact_id": "elsewhere:123"}]
    response = post(client, body_with(derived_from=derived))
    assert response.status_code == 201, response.content
    assert response.json()["derived_from"] == derived
    assert client.get(f"/v1/facts/{response.json()['id']}").json()["derived_from"] == derived


def test_derived_from_null_or_empty_is_an_empty_list(client):
    for derived in (None, []):
        response = post(client, body_with(derived_from=derived, relation=f"memory:{derived!r}"))
        assert response.status_code == 201
        assert response.json()["derived_from"] == []


def test_record_shape(client):
    response = post(client, body_with())
    assert response.status_code == 201
    record = response.json()
    assert set(record) == {
        "id",
        "entity",
        "relation",
        "value",
        "source",
        "timestamp",
        "hlc",
        "received_from",
        "valid_until",
        "confidence",
        "scope",
        "origin_node_id",
        "origin_allowed_scopes",
        "garden_id",
        "attested",
        "attested_key_id",
        "contradicted",
        "warnings",
        "source_trust",
        "effective_confidence",
        "quarantine_status",
        "quarantine_garden_id",
        "sanitizer_warnings",
        "sanitizer_redacted",
        "cid",
        "derived_from",
        "expired",
    }
    assert record["entity"] == ENTITY
    assert record["relation"] == RELATION
    assert record["source"] == OTHER_SOURCE
    assert record["confidence"] == 0.9
    assert record["timestamp"].endswith("+00:00")
    assert record["garden_id"] is None
    assert record["received_from"] is None
    assert record["sanitizer_warnings"] == []
    assert record["sanitizer_redacted"] is False
