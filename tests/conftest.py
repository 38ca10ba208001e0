"""Shared fixtures: API clients holding keys with chosen permissions and tenants, and an admin console login."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from decay.policies import clear_cache as clear_policy_cache
from stigmem import logtail
from stigmem.audit import auth_failures
from stigmem.keys import issue_key
from stigmem.ratelimit import buckets
from stigmem.signing import clear_cache as clear_signing_key_cache
from stigmem.tombstones import clear_cache as clear_tombstone_cache
from ttprules.engine import clear_cache as clear_rule_index

ALL_PERMISSIONS = ["read", "write", "federate", "admin", "admin:federation", "audit.read"]


def pytest_collection_modifyitems(config, items):
    # CI's PostgreSQL pass sets STIGMEM_REQUIRE_POSTGRES=1: there a postgres test must run, never skip.
    if os.environ.get("STIGMEM_REQUIRE_POSTGRES") == "1":
        if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
            raise pytest.UsageError("STIGMEM_REQUIRE_POSTGRES=1 but DATABASE_URL is not a PostgreSQL URL")
        return
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return
    skip = pytest.mark.skip(reason="PostgreSQL test: runs in CI's PostgreSQL pass (DATABASE_URL)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    buckets.reset()
    yield
    buckets.reset()


@pytest.fixture(autouse=True)
def _fresh_auth_failure_counts():
    # Each test starts with no counted failures, and no flush timer outlives the test that armed it.
    auth_failures.reset()
    yield
    auth_failures.reset()


@pytest.fixture(autouse=True)
def _fresh_process_caches():
    # Each test's database starts without tombstones, a stored key, decay policies or TTP rules: nothing an
    # earlier test cached in this process may answer for it.
    for clear in (clear_tombstone_cache, clear_signing_key_cache, clear_policy_cache, clear_rule_index):
        clear()
    yield
    for clear in (clear_tombstone_cache, clear_signing_key_cache, clear_policy_cache, clear_rule_index):
        clear()


@pytest.fixture(autouse=True)
def _kicks_write_nothing(monkeypatch):
    """After-commit kicks enqueue from threads of their own, a trailing one up to KICK_WINDOW_S late.
    Nothing runs that queue in tests, and a late enqueue wrote into the next test's database while
    it was being set up. Tests of the kick itself put ``logtail._enqueue`` back."""
    monkeypatch.setattr(logtail, "_enqueue", lambda: None)
    yield
    throttle = logtail._throttle
    with throttle._lock:
        trailing, throttle._trailing = throttle._trailing, None
    if trailing is not None:
        trailing.cancel()
        trailing.join(5)
    for thread in threading.enumerate():
        if thread.name == "logtail-kick":
            thread.join(5)


@pytest.fixture
def make_client(db) -> Callable[..., APIClient]:
    """``make_client(permissions=[...], tenant="default", entity="...")`` -> an authenticated client."""

    def make(
        permissions: list[str] | None = None,
        tenant: str = "default",
        entity: str = "stigmem://test/agent/tester",
    ) -> APIClient:
        issued = issue_key(tenant=tenant, entity_uri=entity, permissions=permissions or ["read", "write"])
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}")
        client.raw_key = issued.raw_key
        client.key = issued.key
        return client

    return make


@pytest.fixture
def client(make_client) -> APIClient:
    """A read/write client of the default tenant."""
    return make_client(["read", "write"])


@pytest.fixture
def admin_client(make_client) -> APIClient:
    return make_client(ALL_PERMISSIONS, entity="stigmem://test/agent/admin")


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def browser(db) -> Client:
    """A browser logged in to the admin console as the superuser ``root``."""
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", email="", password="a-long-test-password"))
    return client


@pytest.fixture
def is_postgres(db) -> bool:
    return connection.vendor == "postgresql"
