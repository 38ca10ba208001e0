"""Values (WIRE.md §2.2), entity/source normalization (§2.4) and the hybrid logical clock (§2.6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stigmem import clock as clock_module
from stigmem.errors import ApiError, InputInvalid
from stigmem.hlc import Hlc, merge, tick
from stigmem.models import Fact, NodeClock
from stigmem.normalize import INFORMAL_WARNING, UriInvalid, normalize_query_uri, normalize_uri
from stigmem.values import decode_value, parse_iso_datetime, parse_value

ENTITY = "stigmem://testnode/user/alice"
SOURCE = "stigmem://testnode/agent/test"


def _assert(client, value, *, relation="memory:x", entity=ENTITY, source=SOURCE, **extra):
    body = {"entity": entity, "relation": relation, "value": value, "source": source, **extra}
    return client.post("/v1/facts", body, format="json")


# --- values -------------------------------------------------------------------------------------

# (value sent, value_v stored, python type of v on read)
TYPED_VALUES = [
    ({"type": "number", "v": 42}, "42", int),
    ({"type": "number", "v": 42.0}, "42.0", float),
    ({"type": "number", "v": 0.1}, "0.1", float),
    ({"type": "number", "v": -7}, "-7", int),
    ({"type": "number", "v": -0.0}, "-0.0", float),
    ({"type": "number", "v": 1e100}, "1e+100", float),
    ({"type": "number", "v": 12345678901234567890123}, "12345678901234567890123", int),
    ({"type": "boolean", "v": True}, "true", bool),
    ({"type": "boolean", "v": False}, "false", bool),
    ({"type": "null", "v": None}, "null", type(None)),
    ({"type": "string", "v": "42"}, "42", str),
    ({"type": "text", "v": "true"}, "true", str),
    ({"type": "datetime", "v": "2026-05-14T12:34:56Z"}, "2026-05-14T12:34:56Z", str),
    ({"type": "ref", "v": "stigmem://testnode/user/bob"}, "stigmem://testnode/user/bob", str),
]


@pytest.mark.parametrize(("value", "value_v", "py_type"), TYPED_VALUES, ids=[v[1] for v in TYPED_VALUES])
def test_reads_return_v_typed_so_str_gives_value_v(client, value, value_v, py_type):
    created = _assert(client, value, relation=f"memory:{value['type']}")
    assert created.status_code == 201, created.content
    fact = Fact.objects.get(id=created.json()["id"])
    assert fact.value_type == value["type"]
    assert fact.value_v == value_v

    for record in (
        created.json(),
        client.get(f"/v1/facts/{fact.id}").json(),
        client.get("/v1/facts", {"relation": f"memory:{value['type']}"}).json()["facts"][0],
    ):
        v = record["value"]["v"]
        assert type(v) is py_type
        assert record["value"]["type"] == value["type"]
        if py_type is bool:
            assert v is value["v"]
            assert value_v == ("true" if v else "false")
        elif py_type is type(None):
            assert v is None
        else:
            assert str(v) == value_v
            assert v == value["v"]


def test_decode_value_unit():
    assert decode_value("number", "42") == 42
    assert type(decode_value("number", "42")) is int
    assert type(decode_value("number", "42.0")) is float
    assert str(decode_value("number", "42.0")) == "42.0"
    assert str(decode_value("number", "1e+100")) == "1e+100"
    assert str(decode_value("number", "-3")) == "-3"
    assert decode_value("boolean", "true") is True
    assert decode_value("boolean", "false") is False
    assert decode_value("null", "null") is None
    assert decode_value("string", "42") == "42"
    assert decode_value("text", "null") == "null"


def test_parse_value_unit():
    parsed = parse_value({"type": "number", "v": 42}, ["body", "value"])
    assert (parsed.value_type, parsed.value_v, parsed.interpret_as) == ("number", "42", "content")
    parsed = parse_value({"type": "null"}, ["body", "value"])
    assert (parsed.value_type, parsed.value_v) == ("null", "null")
    parsed = parse_value({"type": "string", "v": "x", "interpret_as": "instruction"}, ["body", "value"])
    assert parsed.interpret_as == "instruction"
    parsed = parse_value({"type": "string", "v": "x", "interpret_as": None}, ["body", "value"])
    assert parsed.interpret_as == "content"

    with pytest.raises(InputInvalid) as bad_number:
        parse_value({"type": "number", "v": True}, ["body", "value"])
    assert bad_number.value.status == 422
    assert bad_number.value.detail[0]["loc"] == ["body", "value", "v"]

    with pytest.raises(ApiError) as too_big:
        parse_value({"type": "string", "v": "x" * 4097}, ["body", "value"])
    assert too_big.value.status == 413
    assert too_big.value.detail["code"] == "value_too_large"


def test_interpret_as_is_echoed_and_defaults_to_content(client, admin_client):
    plain = _assert(client, {"type": "string", "v": "hello"})
    assert plain.status_code == 201
    assert plain.json()["value"]["interpret_as"] == "content"
    instruction = _assert(
        admin_client, {"type": "string", "v": "do it", "interpret_as": "instruction"}, relation="memory:i"
    )
    assert instruction.status_code == 201, instruction.content
    assert instruction.json()["value"] == {"type": "string", "v": "do it", "interpret_as": "instruction"}
    assert Fact.objects.get(id=instruction.json()["id"]).interpret_as == "instruction"


def test_parse_iso_datetime_unit():
    assert parse_iso_datetime("2026-05-14T12:34:56Z") == datetime(2026, 5, 14, 12, 34, 56, tzinfo=UTC)
    assert parse_iso_datetime("2026-05-14T12:34:56+02:00") == datetime(2026, 5, 14, 10, 34, 56, tzinfo=UTC)
    assert parse_iso_datetime("2026-05-14T12:34:56").tzinfo is None
    for bad in ["", "yesterday", "2026-13-01", "x" * 65, "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"]:
        with pytest.raises(ValueError):
            parse_iso_datetime(bad)


# --- normalization ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized", "informal"),
    [
        ("stigmem://testnode/user/alice", "stigmem://testnode/user/alice", False),
        ("stigmem://TestNode/User/Alice", "stigmem://testnode/user/alice", False),
        ("  stigmem://TestNode/User/Alice  Smith ", "stigmem://testnode/user/alice-smith", False),
        ("stigmem:// Test /User/ a \t b ", "stigmem://test/user/a-b", False),
        ("stigmem://node/doc/a/b/c", "stigmem://node/doc/a/b/c", False),
        ("user:Alice", "user:alice", True),
        ("  User:Alice   Bob  ", "user:alice-bob", True),
        ("agent/X", "agent/x", True),
        ("stigmem://node/only-two", "stigmem://node/only-two", True),
    ],
)
def test_normalize_uri_unit(raw, normalized, informal):
    result = normalize_uri(raw)
    assert result.uri == normalized
    assert result.informal is informal


@pytest.mark.parametrize("raw", ["", "   ", "\t\n", "stigmem://a/ /x", "stigmem:// /user/x"])
def test_normalize_uri_rejects(raw):
    with pytest.raises(UriInvalid):
        normalize_uri(raw)


def test_normalize_query_uri_unit():
    assert normalize_query_uri("stigmem://A/B/C  D") == "stigmem://a/b/c-d"
    assert normalize_query_uri("User:Alice") == "user:alice"
    assert normalize_query_uri("   ") == "   "


def test_formal_uris_are_normalized_on_write_without_warnings(client):
    response = _assert(
        client,
        {"type": "string", "v": "x"},
        entity="stigmem://TestNode/User/Alice  Smith",
        source=" stigmem://TestNode/Agent/Test ",
    )
    assert response.status_code == 201, response.content
    record = response.json()
    assert record["entity"] == "stigmem://testnode/user/alice-smith"
    assert record["source"] == SOURCE
    assert record["warnings"] == []
    fact = Fact.objects.get(id=record["id"])
    assert (fact.entity, fact.source) == ("stigmem://testnode/user/alice-smith", SOURCE)
    # A later GET carries no warnings.
    assert client.get(f"/v1/facts/{record['id']}").json()["warnings"] == []


def test_informal_entity_is_normalized_with_a_warning(client):
    response = _assert(client, {"type": "string", "v": "x"}, entity="  User:Alice   Bob ")
    assert response.status_code == 201, response.content
    record = response.json()
    assert record["entity"] == "user:alice-bob"
    assert record["warnings"] == [f"entity: {INFORMAL_WARNING}"]
    assert "deprecated" in record["warnings"][0]


def test_informal_source_is_normalized_with_a_warning(client):
    response = _assert(client, {"type": "string", "v": "x"}, source="Agent/Writer")
    assert response.status_code == 201, response.content
    record = response.json()
    assert record["source"] == "agent/writer"
    assert record["warnings"] == [f"source: {INFORMAL_WARNING}"]


def test_informal_entity_and_source_give_two_warnings(client):
    response = _assert(client, {"type": "string", "v": "x"}, entity="user:a", source="agent:b")
    assert response.status_code == 201
    assert response.json()["warnings"] == [f"entity: {INFORMAL_WARNING}", f"source: {INFORMAL_WARNING}"]


def test_relation_is_stored_as_given(client):
    response = _assert(client, {"type": "string", "v": "x"}, relation="Memory:Mixed Case ")
    assert response.status_code == 201
    assert response.json()["relation"] == "Memory:Mixed Case "
    assert client.get("/v1/facts", {"relation": "memory:mixed case"}).json()["facts"] == []
    assert client.get("/v1/facts", {"relation": "Memory:Mixed Case "}).json()["total"] == 1


# --- hybrid logical clock -----------------------------------------------------------------------


def test_hlc_str_and_parse():
    assert str(Hlc(1715690096123, 0)) == "1715690096123.0"
    assert str(Hlc(5, 12)) == "5.12"
    assert Hlc.parse("1715690096123.7") == Hlc(1715690096123, 7)
    assert Hlc.parse(str(Hlc(99, 100))) == Hlc(99, 100)
    for bad in ["", "1", "1.", ".1", "a.b", "1.2.3", "-1.0", "1.-1", "01 .0", "1.0 "]:
        with pytest.raises(ValueError):
            Hlc.parse(bad)


def test_hlc_ordering_is_wall_then_counter():
    assert Hlc(1, 5) < Hlc(2, 0)
    assert Hlc(2, 0) < Hlc(2, 1)
    assert Hlc(10, 0) > Hlc(9, 999)
    # Numeric, not string, ordering.
    assert Hlc.parse("9.0") < Hlc.parse("10.0")
    assert Hlc.parse("10.9") < Hlc.parse("10.10")


def test_tick_uses_physical_time_when_it_moved_on():
    assert tick(Hlc(1000, 5), 2000) == Hlc(2000, 0)


def test_tick_increments_counter_when_time_stands_still_or_goes_back():
    assert tick(Hlc(1000, 5), 1000) == Hlc(1000, 6)
    assert tick(Hlc(1000, 5), 10) == Hlc(1000, 6)
    # A run of ticks with the wall clock jumping backwards never goes backwards.
    last = Hlc(0, 0)
    for now in [500, 400, 400, 600, 100, 600, 601, 0]:
        nxt = tick(last, now)
        assert nxt > last
        last = nxt
    assert last == Hlc(601, 1)


@pytest.mark.parametrize(
    ("last", "remote", "now", "expected"),
    [
        (Hlc(100, 3), Hlc(50, 9), 200, Hlc(200, 0)),  # physical time wins
        (Hlc(100, 3), Hlc(300, 9), 200, Hlc(300, 10)),  # remote ahead
        (Hlc(400, 3), Hlc(300, 9), 200, Hlc(400, 4)),  # local ahead
        (Hlc(300, 3), Hlc(300, 9), 200, Hlc(300, 10)),  # same wall: max counter + 1
        (Hlc(300, 9), Hlc(300, 3), 300, Hlc(300, 10)),  # all three equal
        (Hlc(300, 2), Hlc(100, 0), 300, Hlc(300, 3)),  # local equals now
    ],
)
def test_merge_max_rule(last, remote, now, expected):
    merged = merge(last, remote, now)
    assert merged == expected
    assert merged > last
    assert merged > remote


def test_write_hlc_strictly_increases_and_persists(client, monkeypatch):
    wall = {"ms": 0}
    monkeypatch.setattr(clock_module, "now_ms", lambda: wall["ms"])
    NodeClock.objects.filter(pk=1).update(hlc_wall_ms=0, hlc_counter=0)
    hlcs = []
    # The wall clock reads 5000, 5000, 4000 (it went back), 7000.
    for i, ms in enumerate([5_000, 5_000, 4_000, 7_000]):
        wall["ms"] = ms
        response = _assert(client, {"type": "number", "v": i}, relation=f"memory:h{i}")
        assert response.status_code == 201
        hlcs.append(response.json()["hlc"])
    assert hlcs == ["5000.0", "5000.1", "5000.2", "7000.0"]
    row = NodeClock.objects.get(pk=1)
    assert (row.hlc_wall_ms, row.hlc_counter) == (7_000, 0)


def test_hlc_never_goes_backwards_across_restarts(client):
    """The clock lives in NodeClock: a node whose wall clock is behind keeps counting from it."""
    future_ms = clock_module.now_ms() + 10_000_000_000
    NodeClock.objects.filter(pk=1).update(hlc_wall_ms=future_ms, hlc_counter=41)
    first = _assert(client, {"type": "number", "v": 1}, relation="memory:a").json()["hlc"]
    second = _assert(client, {"type": "number", "v": 2}, relation="memory:b").json()["hlc"]
    assert first == f"{future_ms}.42"
    assert second == f"{future_ms}.43"
    assert Hlc.parse(second) > Hlc.parse(first)
    row = NodeClock.objects.get(pk=1)
    assert (row.hlc_wall_ms, row.hlc_counter) == (future_ms, 43)


def test_batch_facts_get_increasing_hlcs_and_seqs(client):
    facts = [
        {"entity": ENTITY, "relation": f"memory:b{i}", "value": {"type": "number", "v": i}, "source": SOURCE}
        for i in range(5)
    ]
    response = client.post("/v1/facts/batch", {"facts": facts}, format="json")
    assert response.status_code == 200, response.content
    records = [r["fact"] for r in response.json()["results"]]
    hlcs = [Hlc.parse(r["hlc"]) for r in records]
    assert hlcs == sorted(hlcs)
    assert len(set(hlcs)) == 5
    seqs = [Fact.objects.get(id=r["id"]).seq for r in records]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert NodeClock.objects.get(pk=1).last_fact_seq == seqs[-1]
