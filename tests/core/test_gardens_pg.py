"""Gardens under concurrent requests, on PostgreSQL: real threads, each with its own connection.

- creating one slug from many callers at once: exactly one 201, the others 409 (never a 500);
- adding one member from many callers at once: exactly one 201, the others 409;
- two admins demoted at the same time: the garden keeps an admin (the garden row lock).
"""

from __future__ import annotations

import threading

import pytest
from rest_framework.test import APIClient

from stigmem.auth import Caller
from stigmem.gardens import add_member_from_body, create_garden_from_body
from stigmem.keys import issue_key
from stigmem.models import AuditEvent, Garden, GardenMember
from tests.core.fact_log_workload import JOIN_TIMEOUT_S, Threads

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CALLERS = 8


@pytest.fixture(autouse=True)
def _no_rate_limits(settings):
    settings.STIGMEM_RATE_LIMIT_WRITE_PER_S = 1e9
    settings.STIGMEM_RATE_LIMIT_WRITE_BURST = 1e9


def clients(count: int, permissions: list[str]) -> list[APIClient]:
    made = []
    for index in range(count):
        raw = issue_key(tenant="default", entity_uri=f"stigmem://test/agent/c{index}", permissions=permissions).raw_key
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        made.append(client)
    return made


def all_at_once(requests: list) -> list:
    """Run the request callables together (released by one barrier); their responses, in order."""
    go = threading.Barrier(len(requests), timeout=JOIN_TIMEOUT_S)
    responses: list = [None] * len(requests)
    threads = Threads()
    for index, request in enumerate(requests):

        def run(index: int = index, request=request) -> None:
            go.wait()
            responses[index] = request()

        threads.start(run)
    threads.join()
    return responses


def test_concurrent_creates_of_one_slug_give_one_garden_and_409s():
    callers = clients(CALLERS, ["read", "write"])
    body = {"slug": "contested", "name": "Contested"}
    responses = all_at_once([lambda c=c: c.post("/v1/gardens", body, format="json") for c in callers])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (CALLERS - 1), [r.content for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert response.json() == {"detail": "a garden with slug 'contested' already exists"}
    assert Garden.objects.count() == 1
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert list(GardenMember.objects.values_list("entity_uri", "role")) == [(winner["created_by"], "admin")]
    assert AuditEvent.objects.filter(event_type="garden_created").count() == 1


def test_concurrent_adds_of_one_member_give_one_row_and_409s():
    owner = Caller("stigmem://test/agent/owner", "default", frozenset({"read", "write", "admin"}))
    create_garden_from_body(owner, {"slug": "g", "name": "G"})
    admins = clients(CALLERS, ["read", "write", "admin"])
    body = {"entity_uri": "stigmem://test/agent/newcomer", "role": "writer"}
    responses = all_at_once([lambda c=c: c.post("/v1/gardens/g/members", body, format="json") for c in admins])
    assert sorted(r.status_code for r in responses) == [201] + [409] * (CALLERS - 1), [r.content for r in responses]
    assert GardenMember.objects.filter(entity_uri="stigmem://test/agent/newcomer").count() == 1
    assert AuditEvent.objects.filter(event_type="garden_member_added").count() == 1


@pytest.mark.parametrize("action", ["demote", "remove"])
def test_concurrent_demotions_of_the_last_two_admins_keep_one(action):
    owner = Caller("stigmem://test/agent/a", "default", frozenset({"read", "write"}))
    key_admins = clients(2, ["read", "write", "admin"])
    rounds = 5
    for number in range(rounds):
        slug = f"g{number}"
        create_garden_from_body(owner, {"slug": slug, "name": slug})
        add_member_from_body(owner, slug, {"entity_uri": "stigmem://test/agent/b", "role": "admin"})
        paths = [
            f"/v1/gardens/{slug}/members/{entity}" for entity in ("stigmem://test/agent/a", "stigmem://test/agent/b")
        ]
        if action == "demote":
            requests = [
                lambda c=c, p=p: c.patch(p, {"role": "reader"}, format="json")
                for c, p in zip(key_admins, paths, strict=True)
            ]
        else:
            requests = [lambda c=c, p=p: c.delete(p) for c, p in zip(key_admins, paths, strict=True)]
        responses = all_at_once(requests)
        assert sorted(r.status_code for r in responses) == sorted([200 if action == "demote" else 204, 403])
        refused = next(r for r in responses if r.status_code == 403)
        assert refused.json() == {
            "detail": "cannot remove or demote the garden's last admin; make another member admin first"
        }
        assert GardenMember.objects.filter(garden__slug=slug, role="admin").count() == 1
