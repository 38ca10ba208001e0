"""Discovery and operations endpoints (WIRE.md §1, §3): well-known, healthz, me, metrics, schema, docs, 404."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stigmem import tasks
from stigmem.models import NodeIdentity
from stigmem.node import ensure_identity, node_id

NAMESPACES = ["stigmem:", "rel:", "memory:", "intent:", "roadmap:", "preference:", "garden:", "ttp:"]


def fact_body(value: str, source: str = "stigmem://test/agent/writer") -> dict:
    return {
        "entity": "stigmem://test/user/dave",
        "relation": "memory:color",
        "value": {"type": "string", "v": value},
        "source": source,
    }


# --- /.well-known/stigmem -----------------------------------------------------------------------


def test_well_known_exact_shape_without_auth(anon, db, settings):
    settings.STIGMEM_NODE_URL = "https://node.example.com"
    settings.STIGMEM_SPEC_URL = "https://spec.example.com/stigmem"
    response = anon.get("/.well-known/stigmem")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "version": "1.0",
        "node_id": node_id(),
        "node_url": "https://node.example.com",
        "auth": "required",
        "federation": "disabled",
        "source_attestation": "off",
        "namespaces": NAMESPACES,
        "spec": "https://spec.example.com/stigmem",
        "cors": {"dev_localhost": False, "configured": False},
    }
    assert re.fullmatch(r"stigmem:node:\S+", body["node_id"])


def test_well_known_reports_auth_off(anon, db, settings):
    settings.STIGMEM_AUTH_REQUIRED = False
    assert anon.get("/.well-known/stigmem").json()["auth"] == "none"


def test_well_known_ignores_a_bad_key(db):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-key")
    assert client.get("/.well-known/stigmem").status_code == 200
    assert client.get("/healthz").status_code == 200


# --- /healthz -----------------------------------------------------------------------------------


def test_healthz_then_heartbeat(anon, db):
    ensure_identity()  # runnode creates the identity before the workers start
    response = anon.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "db": "ok", "worker_heartbeat_age_s": None}

    tasks.heartbeat()
    assert NodeIdentity.objects.get(pk=1).worker_heartbeat_at is not None
    body = anon.get("/healthz").json()
    assert body["status"] == "ok" and body["db"] == "ok"
    age = body["worker_heartbeat_age_s"]
    assert isinstance(age, int | float) and not isinstance(age, bool)
    assert age >= 0


def test_healthz_needs_no_auth(anon, db):
    assert anon.get("/healthz").json()["status"] == "ok"


# --- /v1/me -------------------------------------------------------------------------------------


def test_me(make_client):
    client = make_client(["write", "audit.read", "read", "federate"], tenant="acme", entity="stigmem://Test/Agent/Me")
    response = client.get("/v1/me")
    assert response.status_code == 200
    assert response.json() == {
        "entity_uri": "stigmem://Test/Agent/Me",
        "permissions": ["audit.read", "federate", "read", "write"],
        "tenant_id": "acme",
    }


def test_me_needs_a_key(anon, db):
    response = anon.get("/v1/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


# --- /metrics -----------------------------------------------------------------------------------


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_writes_reads_contradictions_and_latency(client, anon):
    before = scrape(anon)
    first = client.post("/v1/facts", fact_body("red", "stigmem://test/agent/one"), format="json")
    client.post("/v1/facts", fact_body("blue", "stigmem://test/agent/two"), format="json")  # a conflict
    client.post("/v1/facts", fact_body("blue", "stigmem://test/agent/two"), format="json")  # same CID: not new
    listed = client.get("/v1/facts", {"include_contradicted": "true"})
    assert listed.json()["total"] == 2
    assert client.get(f"/v1/facts/{first.json()['id']}").status_code == 200

    after = scrape(anon)
    names = {name for name, _ in after}
    for expected in ("stigmem_facts_written_total", "stigmem_facts_read_total", "stigmem_contradictions_total"):
        assert expected in names, expected
    written = "stigmem_facts_written_total"
    assert value(after, written, origin="local") - value(before, written, origin="local") == 2
    assert value(after, "stigmem_facts_read_total") - value(before, "stigmem_facts_read_total") == 3
    assert value(after, "stigmem_contradictions_total") - value(before, "stigmem_contradictions_total") == 1

    latency = "stigmem_http_request_duration_seconds_count"
    post = {"route": "v1/facts", "method": "POST", "status": "2xx"}
    get = {"route": "v1/facts", "method": "GET", "status": "2xx"}
    detail = {"route": "v1/facts/<str:ref>", "method": "GET", "status": "2xx"}
    assert value(after, latency, **post) - value(before, latency, **post) == 3
    assert value(after, latency, **get) - value(before, latency, **get) == 1
    assert value(after, latency, **detail) - value(before, latency, **detail) == 1
    # Routes are patterns, never raw paths with ids.
    routes = {dict(labels).get("route") for name, labels in after if name == latency}
    assert not any(first.json()["id"] in route for route in routes)


def test_metrics_label_unmatched_and_error_statuses(client, anon):
    before = scrape(anon)
    anon.get("/no/such/page")
    anon.get("/v1/facts")  # 401
    after = scrape(anon)
    latency = "stigmem_http_request_duration_seconds_count"
    unmatched = {"route": "unmatched", "method": "GET", "status": "4xx"}
    denied = {"route": "v1/facts", "method": "GET", "status": "4xx"}
    assert value(after, latency, **unmatched) - value(before, latency, **unmatched) == 1
    assert value(after, latency, **denied) - value(before, latency, **denied) == 1


def test_metrics_token(anon, db, settings):
    settings.STIGMEM_METRICS_TOKEN = "metrics-secret-token"
    missing = anon.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == "Bearer"
    assert missing.json() == {"detail": "metrics token required"}
    wrong = anon.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret-tokeN")
    assert wrong.status_code == 401
    assert b"stigmem_facts_written" not in wrong.content
    ok = anon.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret-token")
    assert ok.status_code == 200
    assert b"stigmem_facts_written_total" in ok.content


def test_metrics_open_by_default(anon, db, settings):
    settings.STIGMEM_METRICS_TOKEN = ""
    response = anon.get("/metrics")
    assert response.status_code == 200
    assert b"# TYPE stigmem_facts_read_total counter" in response.content


# --- schema, docs, 404 --------------------------------------------------------------------------


def test_schema_is_an_openapi_3_document(anon, db):
    response = anon.get("/v1/schema", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "stigmem node"
    for path in ("/v1/facts", "/v1/facts/batch", "/v1/conflicts", "/v1/auth/keys", "/v1/me", "/.well-known/stigmem"):
        assert path in schema["paths"], path
    assert "post" in schema["paths"]["/v1/facts"] and "get" in schema["paths"]["/v1/facts"]
    operation_ids = {
        op["operationId"] for ops in schema["paths"].values() for op in ops.values() if "operationId" in op
    }
    assert {"assert_fact", "query_facts", "create_api_key", "revoke_api_key", "me"} <= operation_ids
    # The default representation is YAML of the same document.
    yaml = anon.get("/v1/schema")
    assert yaml.status_code == 200
    assert yaml.content.startswith(b"openapi: 3.")


def test_docs_page_works_offline(anon, db):
    response = anon.get("/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "swagger" in html.lower()
    # Assets are served by the node itself, never from a CDN.
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    assert not [a for a in assets if a.startswith(("http://", "https://", "//"))]
    script = next(a for a in assets if a.endswith(".js"))
    static = anon.get(script)
    assert static.status_code == 200


@pytest.mark.parametrize("path", ["/nope", "/v1/facts/", "/v1/unknown", "/v2/facts", "/.well-known/other"])
def test_unknown_url_is_404_json(anon, db, path):
    response = anon.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "not found"}
