"""GET /v1/facts, GET /v1/facts/{id|cid} (WIRE.md §2.7)."""

from __future__ import annotations

import types
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from stigmem import facts as facts_module
from stigmem.auth import Caller
from stigmem.models import Fact
from stigmem.queries import FactQuery, get_fact, run_fact_query

ENTITY = "stigmem://testnode/user/alice"
BOB = "stigmem://testnode/user/bob"
S1 = "stigmem://testnode/agent/one"
S2 = "stigmem://testnode/agent/two"


def body(v, *, entity=ENTITY, relation="memory:role", source=S1, **extra):
    return {"entity": entity, "relation": relation, "value": {"type": "string", "v": v}, "source": source, **extra}


def write(client, v, **kw):
    response = client.post("/v1/facts", body(v, **kw), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def query(client, **params):
    response = client.get("/v1/facts", params)
    assert response.status_code == 200, response.content
    return response.json()


def ids(page):
    return [f["id"] for f in page["facts"]]


@pytest.fixture
def write_clock(monkeypatch):
    """Control the timestamp the write path gives new facts: ``write_clock.at = datetime``."""
    state = types.SimpleNamespace(at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    monkeypatch.setattr(facts_module, "timezone", types.SimpleNamespace(now=lambda: state.at))
    return state


# --- response shape -----------------------------------------------------------------------------


def test_response_shape_and_total_header(client):
    a = write(client, "x", relation="memory:a")
    b = write(client, "y", relation="memory:b")
    response = client.get("/v1/facts")
    assert response.status_code == 200
    page = response.json()
    assert set(page) == {"facts", "total", "cursor", "tombstone_notices"}
    assert page["total"] == 2
    assert response.headers["X-Total-Count"] == "2"
    assert page["cursor"] is None
    assert page["tombstone_notices"] == []
    assert ids(page) == [b["id"], a["id"]]  # newest first
    assert page["facts"][0] == client.get(f"/v1/facts/{b['id']}").json()


def test_empty_result(client):
    response = client.get("/v1/facts", {"entity": "stigmem://nobody/user/x"})
    assert response.status_code == 200
    assert response.json() == {"facts": [], "total": 0, "cursor": None, "tombstone_notices": []}
    assert response.headers["X-Total-Count"] == "0"


def test_total_is_the_page_size(client):
    for i in range(5):
        write(client, str(i), relation=f"memory:{i}")
    response = client.get("/v1/facts", {"limit": 2})
    assert response.json()["total"] == 2
    assert response.headers["X-Total-Count"] == "2"
    assert len(response.json()["facts"]) == 2


def test_read_needs_read_permission(make_client, anon):
    writer = make_client(["write"])
    response = writer.get("/v1/facts")
    assert response.status_code == 403
    assert response.json() == {"detail": "read permission required"}
    assert anon.get("/v1/facts").status_code == 401


def test_other_tenants_facts_are_invisible(client, make_client):
    other = make_client(["read", "write"], tenant="other")
    theirs = write(other, "secret")
    mine = write(client, "mine", relation="memory:mine")
    assert ids(query(client)) == [mine["id"]]
    assert ids(query(other)) == [theirs["id"]]
    assert client.get(f"/v1/facts/{theirs['id']}").status_code == 404
    assert client.get(f"/v1/facts/{theirs['cid']}").status_code == 404
    assert client.post(f"/v1/facts/{theirs['id']}/verify-cid").status_code == 404


# --- filters ------------------------------------------------------------------------------------


def test_filter_entity_normalized_like_on_write(client):
    a = write(client, "x", entity="stigmem://testnode/user/alice-smith")
    write(client, "y", entity=BOB)
    for form in (
        "stigmem://testnode/user/alice-smith",
        "stigmem://TestNode/User/Alice  Smith",
        "  stigmem://TESTNODE/user/alice smith ",
    ):
        assert ids(query(client, entity=form)) == [a["id"]], form


def test_filter_informal_entity_normalized(client):
    a = write(client, "x", entity="User:Alice")
    assert a["entity"] == "user:alice"
    assert ids(query(client, entity="  USER:alice ")) == [a["id"]]


def test_filter_relation_exact(client):
    a = write(client, "x", relation="memory:role")
    write(client, "y", relation="memory:roles")
    assert ids(query(client, relation="memory:role")) == [a["id"]]
    assert ids(query(client, relation="memory:rol")) == []


def test_filter_source_normalized(client):
    a = write(client, "x", source=S1, relation="memory:a")
    write(client, "y", source=S2, relation="memory:b")
    assert ids(query(client, source=S1)) == [a["id"]]
    assert ids(query(client, source="stigmem://TestNode/Agent/ONE")) == [a["id"]]


def test_filter_scope(client):
    local = write(client, "x", scope="local")
    team = write(client, "y", scope="team")
    assert ids(query(client, scope="local")) == [local["id"]]
    assert ids(query(client, scope="team")) == [team["id"]]
    assert ids(query(client, scope="public")) == []


@pytest.mark.parametrize("scope", ["global", "LOCAL", "teams"])
def test_bad_scope_is_400(client, scope):
    response = client.get("/v1/facts", {"scope": scope})
    assert response.status_code == 400
    assert response.json()["detail"]["code"] == "invalid_scope"
    assert isinstance(response.json()["detail"]["message"], str)


def test_filter_min_confidence(client):
    low = write(client, "x", relation="memory:a", confidence=0.5)
    high = write(client, "y", relation="memory:b", confidence=0.9)
    assert ids(query(client, min_confidence="0.6")) == [high["id"]]
    assert ids(query(client, min_confidence="0.5")) == [high["id"], low["id"]]
    assert ids(query(client, min_confidence="0")) == [high["id"], low["id"]]
    assert ids(query(client, min_confidence="1")) == []


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "nan", "inf", "1e9"])
def test_min_confidence_out_of_range_is_422(client, value):
    response = client.get("/v1/facts", {"min_confidence": value})
    assert response.status_code == 422
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["query", "min_confidence"]
    assert isinstance(entry["msg"], str)
    assert isinstance(entry["type"], str)


def test_filters_combine(client):
    target = write(client, "x", entity=ENTITY, relation="memory:a", source=S1, scope="team", confidence=0.8)
    write(client, "x", entity=BOB, relation="memory:a", source=S1, scope="team", confidence=0.8)
    write(client, "x", entity=ENTITY, relation="memory:b", source=S1, scope="team", confidence=0.8)
    write(client, "x", entity=ENTITY, relation="memory:a", source=S2, scope="local", confidence=0.8)
    write(client, "y", entity=ENTITY, relation="memory:a", source=S1, scope="company", confidence=0.3)
    page = query(client, entity=ENTITY, relation="memory:a", source=S1, scope="team", min_confidence="0.5")
    assert ids(page) == [target["id"]]


def test_include_contradicted(client):
    old = write(client, "x")
    new = write(client, "y")
    assert ids(query(client)) == [new["id"]]
    assert ids(query(client, include_contradicted="false")) == [new["id"]]
    for truthy in ("true", "1", "True", "yes"):
        assert ids(query(client, include_contradicted=truthy)) == [new["id"], old["id"]]


@pytest.mark.parametrize("name", ["include_contradicted", "include_expired"])
def test_bad_boolean_is_422(client, name):
    response = client.get("/v1/facts", {name: "maybe"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", name]


def test_include_expired(client):
    expired = write(client, "x", relation="memory:a", valid_until="2001-01-01T00:00:00Z")
    live = write(client, "y", relation="memory:b", valid_until="2999-01-01T00:00:00+02:00")
    forever = write(client, "z", relation="memory:c")
    assert ids(query(client)) == [forever["id"], live["id"]]
    page = query(client, include_expired="true")
    assert ids(page) == [forever["id"], live["id"], expired["id"]]
    by_id = {f["id"]: f for f in page["facts"]}
    assert by_id[expired["id"]]["expired"] is True
    assert by_id[expired["id"]]["valid_until"] == "2001-01-01T00:00:00Z"
    assert by_id[live["id"]]["expired"] is False
    assert by_id[live["id"]]["valid_until"] == "2999-01-01T00:00:00+02:00"
    assert by_id[forever["id"]]["expired"] is False
    # An expired fact is still readable by id.
    assert client.get(f"/v1/facts/{expired['id']}").json()["expired"] is True


def test_naive_valid_until_is_utc(client):
    expired = write(client, "x", valid_until="2001-01-01T00:00:00")
    assert ids(query(client)) == []
    assert ids(query(client, include_expired="true")) == [expired["id"]]


def test_after_is_strictly_after_compared_as_datetimes(client, write_clock):
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    written = []
    for i in range(3):
        write_clock.at = t0 + timedelta(seconds=i)
        written.append(write(client, str(i), relation=f"memory:{i}"))
    assert written[1]["timestamp"] == "2026-01-01T12:00:01+00:00"

    assert ids(query(client, after="2026-01-01T12:00:01+00:00")) == [written[2]["id"]]
    assert ids(query(client, after="2026-01-01T12:00:00.999999+00:00")) == [written[2]["id"], written[1]["id"]]
    assert ids(query(client, after="2026-01-01T12:00:00Z")) == [written[2]["id"], written[1]["id"]]
    # The same instant in another offset, and naive (= UTC).
    assert ids(query(client, after="2026-01-01T14:00:01+02:00")) == [written[2]["id"]]
    assert ids(query(client, after="2026-01-01T12:00:01")) == [written[2]["id"]]
    assert ids(query(client, after="2025-12-31T23:59:59Z")) == [w["id"] for w in reversed(written)]
    assert ids(query(client, after="2026-01-01T12:00:02Z")) == []
    # A timestamp from a response can be fed back as `after`.
    assert ids(query(client, after=written[0]["timestamp"])) == [written[2]["id"], written[1]["id"]]


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "12:00", "9999-12-31T23:59:59-05:00"])
def test_bad_after_is_422(client, value):
    response = client.get("/v1/facts", {"after": value})
    assert response.status_code == 422
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["query", "after"]
    assert entry["type"] == "datetime_parsing"


@pytest.mark.parametrize("name", ["entity", "relation", "source"])
def test_nul_in_a_filter_is_422(client, name):
    response = client.get("/v1/facts", {name: "a\x00b"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", name]


def test_garden_filter_is_404_while_no_garden_exists(client):
    response = client.get("/v1/facts", {"garden_id": "stigmem://testnode/garden/team"})
    assert response.status_code == 404
    assert response.json() == {"detail": "garden not found"}


def test_errors_are_collected(client):
    response = client.get("/v1/facts", {"limit": "0", "min_confidence": "2", "after": "x"})
    assert response.status_code == 422
    locs = sorted(tuple(e["loc"]) for e in response.json()["detail"])
    assert locs == [("query", "after"), ("query", "limit"), ("query", "min_confidence")]


# --- limit and cursor ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-5", "1.5", "10a"])
def test_bad_limit_is_422(client, limit):
    response = client.get("/v1/facts", {"limit": limit})
    assert response.status_code == 422
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["query", "limit"]


def test_limit_bounds_and_default(client):
    for i in range(52):
        write(client, str(i), relation=f"memory:{i}")
    assert query(client, limit="1")["total"] == 1
    assert query(client, limit="500")["total"] == 52
    default = query(client)
    assert default["total"] == 50
    assert default["cursor"] is not None


def _page_through(client, limit, between_pages=None, **params):
    seen = []
    cursor = None
    pages = 0
    while True:
        page = query(client, limit=str(limit), **({"cursor": cursor} if cursor else {}), **params)
        pages += 1
        assert page["total"] == len(page["facts"]) <= limit
        seen.extend(ids(page))
        cursor = page["cursor"]
        if cursor is None:
            return seen, pages
        if between_pages:
            between_pages(pages)


def test_cursor_paging_newest_first_without_repeats_or_skips(client):
    written = [write(client, str(i), relation=f"memory:{i}")["id"] for i in range(7)]
    seen, pages = _page_through(client, 3)
    assert seen == list(reversed(written))
    assert pages == 3


def test_cursor_exact_multiple_of_limit(client):
    written = [write(client, str(i), relation=f"memory:{i}")["id"] for i in range(6)]
    seen, _ = _page_through(client, 3)
    assert seen == list(reversed(written))


def test_cursor_paging_while_others_write(client):
    written = [write(client, str(i), relation=f"memory:{i}")["id"] for i in range(9)]
    added = []

    def write_more(page_number):
        for j in range(2):
            added.append(write(client, f"new{page_number}.{j}", relation=f"memory:new{page_number}.{j}")["id"])

    seen, pages = _page_through(client, 4, between_pages=write_more)
    # Paging continues below the cursor: every original fact exactly once, none of the newer ones.
    assert seen == list(reversed(written))
    assert pages == 3
    assert len(added) == 4
    assert not set(added) & set(seen)
    # A fresh query sees the new facts first.
    assert ids(query(client, limit="4")) == list(reversed(added))


def test_cursor_paging_while_heads_change(client):
    """A key superseded between pages drops out of later pages; nothing repeats."""
    written = [write(client, str(i), relation=f"memory:{i}")["id"] for i in range(6)]
    first = query(client, limit="3")
    assert ids(first) == list(reversed(written))[:3]
    write(client, "changed", relation="memory:1")  # supersedes written[1], which is on the next page
    second = query(client, limit="3", cursor=first["cursor"])
    assert ids(second) == [written[2], written[0]]
    assert second["cursor"] is None


def test_cursor_with_filters(client):
    mine = [write(client, str(i), relation=f"memory:{i}", source=S1)["id"] for i in range(5)]
    for i in range(5):
        write(client, str(i), relation=f"memory:{i}", source=S2, scope="team")
    seen, _ = _page_through(client, 2, source=S1)
    assert seen == list(reversed(mine))


def test_tampered_cursor_is_400(client):
    for i in range(3):
        write(client, str(i), relation=f"memory:{i}")
    cursor = query(client, limit="1")["cursor"]
    assert cursor
    tampered = cursor[:-1] + ("A" if cursor[-1] != "A" else "B")
    for bad in (tampered, "garbage", cursor + "x", "eyJzIjoxfQ:bad"):
        response = client.get("/v1/facts", {"cursor": bad})
        assert response.status_code == 400, bad
        assert response.json()["detail"]["code"] == "cursor_invalid"
        assert isinstance(response.json()["detail"]["message"], str)


def test_cursor_of_another_tenant_still_cannot_leak(client, make_client):
    other = make_client(["read", "write"], tenant="other")
    for i in range(3):
        write(other, str(i), relation=f"memory:{i}")
    write(client, "mine")
    cursor = query(other, limit="1")["cursor"]
    page = query(client, cursor=cursor)
    assert all(Fact.objects.get(id=f["id"]).tenant == "default" for f in page["facts"])


# --- get by id / cid ----------------------------------------------------------------------------


def test_get_by_id_and_cid(client):
    a = write(client, "x")
    by_id = client.get(f"/v1/facts/{a['id']}")
    by_cid = client.get(f"/v1/facts/{a['cid']}")
    assert by_id.status_code == by_cid.status_code == 200
    assert by_id.json() == by_cid.json()
    assert by_id.json()["id"] == a["id"]
    assert by_id.json()["value"]["v"] == "x"
    # Uppercase uuid is the same id.
    assert client.get(f"/v1/facts/{a['id'].upper()}").json()["id"] == a["id"]


def test_get_returns_superseded_versions_too(client):
    old = write(client, "x")
    write(client, "y")
    response = client.get(f"/v1/facts/{old['id']}")
    assert response.status_code == 200
    assert response.json()["value"]["v"] == "x"


@pytest.mark.parametrize(
    "ref",
    [
        str(uuid.uuid4()),
        "sha256:" + "a" * 64,
        "not-a-uuid",
        "12345",
        "sha256",
    ],
)
def test_get_unknown_is_404(client, ref):
    write(client, "x")
    response = client.get(f"/v1/facts/{ref}")
    assert response.status_code == 404
    assert response.json() == {"detail": "fact not found"}


@pytest.mark.parametrize(
    "ref", ["sha256:xyz", "sha256:", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 65]
)
def test_get_malformed_cid_is_400(client, ref):
    response = client.get(f"/v1/facts/{ref}")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail["code"] == "cid_malformed"
    assert isinstance(detail["message"], str)


# --- the service functions ----------------------------------------------------------------------


def test_service_functions(client):
    a = write(client, "x", relation="memory:a")
    b = write(client, "y", relation="memory:b")
    caller = Caller("stigmem://test/agent/tester", "default", frozenset({"read"}))
    page = run_fact_query(caller, FactQuery(limit=1))
    assert [str(f.id) for f in page.facts] == [b["id"]]
    assert page.cursor is not None
    assert str(get_fact(caller, a["cid"]).id) == a["id"]
    stranger = Caller("x", "other", frozenset({"read"}))
    assert run_fact_query(stranger, FactQuery()).facts == []


def test_timestamps_are_utc_iso(client):
    a = write(client, "x")
    stamp = datetime.fromisoformat(a["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert a["timestamp"] == stamp.isoformat()
    assert query(client)["facts"][0]["timestamp"] == a["timestamp"]
    assert client.get(f"/v1/facts/{a['id']}").json()["timestamp"] == a["timestamp"]
