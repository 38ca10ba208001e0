"""Per-key token buckets for writes and reads (WIRE.md §1)."""

from __future__ import annotations

import pytest

from stigmem.models import Fact


def fact_body(n: int) -> dict:
    return {
        "entity": f"stigmem://test/user/u{n}",
        "relation": "memory:n",
        "value": {"type": "number", "v": n},
        "source": "stigmem://test/agent/writer",
    }


def assert_429(response) -> int:
    assert response.status_code == 429, response.content
    retry_after = response["Retry-After"]
    assert retry_after.isdigit(), retry_after
    seconds = int(retry_after)
    assert seconds >= 1
    assert response.json() == {"detail": "rate limit exceeded", "retry_after": seconds}
    return seconds


@pytest.fixture
def tight_writes(settings):
    settings.STIGMEM_RATE_LIMIT_WRITE_BURST = 3
    settings.STIGMEM_RATE_LIMIT_WRITE_PER_S = 0.001


@pytest.fixture
def tight_reads(settings):
    settings.STIGMEM_RATE_LIMIT_READ_BURST = 3
    settings.STIGMEM_RATE_LIMIT_READ_PER_S = 0.001


def test_write_burst_then_429(client, tight_writes):
    for n in range(3):
        assert client.post("/v1/facts", fact_body(n), format="json").status_code == 201
    rejected = client.post("/v1/facts", fact_body(99), format="json")
    seconds = assert_429(rejected)
    # One token at 0.001/s is ~1000 s away.
    assert 900 <= seconds <= 1000
    # The rejected write stored nothing.
    assert Fact.objects.count() == 3
    assert not Fact.objects.filter(entity="stigmem://test/user/u99").exists()
    # Still limited: the bucket does not refill from being refused.
    assert_429(client.post("/v1/facts", fact_body(100), format="json"))
    assert Fact.objects.count() == 3


def test_batch_and_resolve_share_the_write_bucket(client, tight_writes):
    assert client.post("/v1/facts/batch", {"facts": [fact_body(1), fact_body(2)]}, format="json").status_code == 200
    assert client.post("/v1/facts", fact_body(3), format="json").status_code == 201
    assert client.post("/v1/facts", fact_body(4), format="json").status_code == 201
    assert_429(client.post("/v1/facts/batch", {"facts": [fact_body(5)]}, format="json"))
    assert_429(client.post("/v1/conflicts/00000000-0000-0000-0000-000000000000/resolve", {}, format="json"))
    assert Fact.objects.count() == 4


def test_reads_have_their_own_bucket(client, tight_writes):
    for n in range(3):
        client.post("/v1/facts", fact_body(n), format="json")
    assert_429(client.post("/v1/facts", fact_body(3), format="json"))
    for _ in range(5):
        response = client.get("/v1/facts")
        assert response.status_code == 200
        assert response.json()["total"] == 3


def test_read_limit_does_not_block_writes(client, tight_reads):
    for _ in range(3):
        assert client.get("/v1/facts").status_code == 200
    assert_429(client.get("/v1/facts"))
    assert_429(client.get("/v1/me"))
    created = client.post("/v1/facts", fact_body(1), format="json")
    assert created.status_code == 201
    assert Fact.objects.filter(id=created.json()["id"]).exists()


def test_another_key_is_unaffected(make_client, tight_writes):
    first = make_client(["read", "write"], entity="stigmem://test/agent/first")
    second = make_client(["read", "write"], entity="stigmem://test/agent/first")  # same identity, own key
    third = make_client(["read", "write"], tenant="other", entity="stigmem://test/agent/third")
    for n in range(3):
        first.post("/v1/facts", fact_body(n), format="json")
    assert_429(first.post("/v1/facts", fact_body(3), format="json"))
    for client in (second, third):
        for n in range(3):
            response = client.post("/v1/facts", fact_body(10 + n), format="json")
            assert response.status_code == 201, response.content
        assert_429(client.post("/v1/facts", fact_body(20), format="json"))
    assert Fact.objects.filter(tenant="default").count() == 6
    assert Fact.objects.filter(tenant="other").count() == 3


def test_auth_failures_are_not_throttled_as_the_key(client, anon, tight_reads):
    """Unauthenticated requests are answered 401, and do not spend the key's bucket."""
    for _ in range(10):
        assert anon.get("/v1/facts").status_code == 401
    for _ in range(3):
        assert client.get("/v1/facts").status_code == 200
    assert_429(client.get("/v1/facts"))


def test_discovery_endpoints_are_not_throttled(anon, db, tight_reads):
    for _ in range(6):
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/.well-known/stigmem").status_code == 200


def test_generous_defaults_allow_normal_use(client):
    for n in range(20):
        assert client.post("/v1/facts", fact_body(n), format="json").status_code == 201
        assert client.get("/v1/facts", {"limit": 1}).status_code == 200
    assert Fact.objects.count() == 20
