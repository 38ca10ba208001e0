"""Property-based API test: schemathesis against the node's own OpenAPI document (/v1/schema).

Every operation of the document is exercised in-process through the WSGI app, authenticated as
an admin of the default tenant, with a bounded, deterministic number of generated requests per
operation. Each response must not be a server error and must conform to the document: a
documented status code, the documented content type and a body that matches the schema.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from pathlib import Path

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from decay.models import DecayPolicy
from stigmem.auth import Caller
from stigmem.fact_input import parse_fact_body
from stigmem.facts import assert_facts
from stigmem.gardens import add_member_from_body, create_garden_from_body
from stigmem.keys import issue_key
from stigmem.models import ApiKey, Conflict, Fact, Job, Tombstone
from stigmem.tombstones import create_tombstone
from subscriptions.models import Delivery, Subscription
from subscriptions.service import new_signing_secret
from tests.conftest import ALL_PERMISSIONS
from ttprules.models import RuleStats, Tag
from ttprules.store import set_state, sync_directory

MAX_EXAMPLES = 25
FUZZER = "stigmem://test/agent/fuzzer"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


SEED_VALUES = [
    {"type": "string", "v": "blue"},
    {"type": "text", "v": 'caf\u00e9\n"q"'},
    {"type": "number", "v": 42},
    {"type": "number", "v": 0.5},
    {"type": "boolean", "v": True},
    {"type": "datetime", "v": "2026-05-14T12:34:56+00:00"},
    {"type": "ref", "v": "stigmem://testnode/user/bob"},
    {"type": "null"},
]


def seed_facts() -> None:
    """Facts of every value type, conflicts, a retraction and an expired fact, so that reads
    return real records (and their schemas get checked) rather than only empty pages."""
    bodies = [
        {
            "entity": "stigmem://testnode/user/alice",
            "relation": f"memory:field{index}",
            "value": value,
            "source": "stigmem://testnode/agent/seed",
            "scope": "company",
            "confidence": 0.9,
            "derived_from": [{"hash": "sha256:" + "ab" * 32}],
        }
        for index, value in enumerate(SEED_VALUES)
    ]
    other = {"entity": "stigmem://testnode/user/alice", "relation": "memory:field0", "scope": "company"}
    bodies += [
        {**other, "value": {"type": "string", "v": "green"}, "source": "stigmem://testnode/agent/other"},
        {**other, "value": {"type": "string", "v": "red"}, "source": "stigmem://testnode/agent/third"},
        {**other, "value": {"type": "string", "v": "red"}, "source": "user:carol", "confidence": 0.0},
        {
            "entity": "user:dave",
            "relation": "memory:visa",
            "value": {"type": "string", "v": "expired"},
            "source": "stigmem://testnode/agent/seed",
            "valid_until": "2001-01-01T00:00:00Z",
        },
    ]
    assert_facts("default", [parse_fact_body(body) for body in bodies])


SEED_GARDEN = "seed"
SEED_MEMBERS = [("stigmem://testnode/agent/writer", "writer"), ("user:reader", "reader")]


def seed_gardens() -> None:
    """A garden the fuzzer administers, with a writer and a reader, so member routes reach their success paths."""
    owner = Caller(FUZZER, "default", frozenset(ALL_PERMISSIONS))
    create_garden_from_body(owner, {"slug": SEED_GARDEN, "name": "Seed", "scope": "company"})
    for entity_uri, role in SEED_MEMBERS:
        add_member_from_body(owner, SEED_GARDEN, {"entity_uri": entity_uri, "role": role})


SEED_TOMBSTONED = "stigmem://testnode/user/forgotten"


def seed_tombstones() -> None:
    """An active tombstone, so the status and revoke routes reach their success paths."""
    create_tombstone(tenant="default", entity_uri=SEED_TOMBSTONED, scope="*", actor=FUZZER)


SEED_SUBSCRIPTION = "5eed0000-0000-4000-8000-000000000001"
SEED_EVENT = "5eed0000-0000-4000-8000-000000000002"


def seed_subscriptions() -> None:
    """A subscription of the fuzzer with one failed event, so its routes reach their success paths."""
    now = timezone.now()
    subscription = Subscription.objects.create(
        id=SEED_SUBSCRIPTION,
        tenant="default",
        subscriber_identity=FUZZER,
        target="company",
        target_kind=Subscription.Kind.SCOPE,
        match_key="company",
        on_change=Subscription.OnChange.WEBHOOK,
        delivery_address="https://hooks.example.com/in",
        created_at=now,
        signing_secret=new_signing_secret(),
    )
    Delivery.objects.create(
        id=SEED_EVENT,
        subscription=subscription,
        tenant="default",
        event_type="fact_asserted",
        topic="fact.asserted",
        fact=Fact.objects.order_by("seq").first(),
        created_at=now,
        next_attempt_at=now,
        status=Delivery.Status.FAILED,
        attempts=10,
        last_error="HTTP 500",
    )


SEED_POLICY = 5151
SEED_JOB = "5eed0000-0000-4000-8000-000000000003"


def seed_decay() -> None:
    """A decay policy and a finished sweep job, so their routes reach their success paths."""
    DecayPolicy.objects.create(
        pk=SEED_POLICY, tenant="default", name="seed", relation_prefix="seed:", ttl_seconds=86400
    )
    now = timezone.now()
    Job.objects.create(
        id=SEED_JOB,
        tenant="default",
        kind="decay",
        status=Job.Status.DONE,
        params={"ttl_seconds": 0},
        estimated_s=1,
        progress=1.0,
        scanned=2,
        decayed=2,
        created_by=FUZZER,
        started_at=now,
        completed_at=now,
    )


SEED_RULES = ["R0001", "R0002", "BROKEN"]


def seed_ttprules(shipped: Path, directory: Path) -> None:
    """Two shipped rules and an invalid one, a state, counters and a tag, so the TTP routes reach their
    success paths."""
    directory.mkdir()
    for rule_id in SEED_RULES[:2]:
        shutil.copy(shipped / f"{rule_id}.yaml", directory)
    (directory / "BROKEN.yaml").write_text("rule_id: BROKEN\n")
    sync_directory(directory)
    set_state("R0002", "clipped", confidence_max=0.5, reason="seed", set_by=FUZZER)
    now = timezone.now()
    RuleStats.objects.create(rule_id="R0001", matched=1, tags=1, last_matched_at=now)
    fact = Fact.objects.filter(tenant="default", garden="").order_by("seq").first()
    Tag.objects.create(
        id=uuid.uuid4(),
        tenant="default",
        fact=fact,
        entity=fact.entity,
        rule_id="R0001",
        rule_version=1,
        tactic="TA0002",
        technique_id="T1059",
        sub_technique_id="T1059.004",
        confidence=0.6,
        evidence={"value.v": fact.value_v},
        attack_version="18.1",
        created_at=now,
    )


@pytest.fixture
def in_process_requests():
    """Keep the test's database connection open across in-process requests.

    A WSGI request normally ends by closing connections that are inside a transaction, which
    here is the test's own transaction; Django's test client disconnects this handler the same way.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def admin_key(db, settings, in_process_requests, tmp_path) -> str:
    # Thousands of requests from one key: the rate limiter must not answer 429 during the run.
    settings.STIGMEM_RATE_LIMIT_READ_PER_S = 1e9
    settings.STIGMEM_RATE_LIMIT_READ_BURST = 1e9
    settings.STIGMEM_RATE_LIMIT_WRITE_PER_S = 1e9
    settings.STIGMEM_RATE_LIMIT_WRITE_BURST = 1e9
    seed_facts()
    seed_gardens()
    seed_tombstones()
    seed_subscriptions()
    seed_decay()
    seed_ttprules(settings.STIGMEM_TTP_RULES_DIR, tmp_path / "rules")
    # Generated webhook hosts must not be looked up in real DNS.
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = True
    # Federation on, so its endpoints are fuzzed past the "disabled" 404 (peer tokens then answer 401).
    settings.STIGMEM_FEDERATION_ENABLED = True
    issue_key(tenant="default", entity_uri="stigmem://test/agent/other", permissions=["read"])  # one to revoke
    return issue_key(tenant="default", entity_uri=FUZZER, permissions=ALL_PERMISSIONS).raw_key


# Loaded at collection, like any schemathesis suite: serving the document touches no database.
# (``schemathesis.pytest.from_fixture`` would load it inside the test, but schemathesis 4.32.5's
# lazy loader uses ``Node._nodeid``, which pytest 9 no longer has.)
schema = schemathesis.openapi.from_wsgi(
    "/v1/schema",
    get_wsgi_application(),
    config=SchemathesisConfig.from_dict(
        {"generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"}}
    ),
)


def existing_ids(name: str) -> list[str]:
    """Ids of stored objects for a path parameter (never the fuzzer's own key)."""
    if name == "ref":
        facts = list(Fact.objects.order_by("seq")[:4])
        return [str(f.id) for f in facts] + [f.cid for f in facts]
    if name == "conflict_id":
        return [c.public_id for c in Conflict.objects.order_by("detected_at", "id")]
    # Constants, not queries: examples delete gardens and members, and hypothesis needs the same choices every time.
    if name == "garden":
        return [SEED_GARDEN]
    if name == "member_uri":
        return [FUZZER, *(entity_uri for entity_uri, _ in SEED_MEMBERS)]
    if name == "tombstone_id":
        # Stable within a test: tombstones are revoked, never deleted.
        return list(Tombstone.objects.order_by("created_at", "id").values_list("id", flat=True))
    if name == "entity_uri":
        return [SEED_TOMBSTONED]
    if name == "subscription_id":
        return [SEED_SUBSCRIPTION]
    if name == "event_id":
        return [SEED_EVENT]
    if name == "policy_id":
        return [str(SEED_POLICY)]
    if name == "job_id":
        return [SEED_JOB]
    if name == "rule_id":
        return SEED_RULES
    if name == "key_id":
        others = ApiKey.objects.exclude(entity_uri=FUZZER).order_by("created_at")
        return [str(key_id) for key_id in others.values_list("id", flat=True)]
    return []


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    # Random ids only ever reach the 404 branch: mix in ids that exist so success responses get checked too.
    choices = [path_parameters]
    known = {name: existing_ids(name) for name in path_parameters or {}}
    for name, ids in known.items():
        choices += [{**path_parameters, name: value} for value in ids]
    if len(known) > 1 and all(known.values()):
        # Several ids in one path (a garden and one of its members): every combination of existing ones too.
        choices += [dict(zip(known, values, strict=True)) for values in itertools.product(*known.values())]
    return st.sampled_from(choices)


@schema.parametrize()
# The admin key fixture is made once per operation and is meant to be shared by every example.
@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi_document(case, admin_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {admin_key}"}, checks=CHECKS)
