"""Gardens in the Django admin: the API's rules (slugs, member URIs, at least one admin) and audit rows."""

from __future__ import annotations

import pytest
from django.urls import reverse

from stigmem.auth import Caller
from stigmem.gardens import add_member_from_body, create_garden_from_body
from stigmem.models import AuditEvent, Garden, GardenMember
from stigmem.node import node_authority

ALICE = "stigmem://test/agent/alice"
BOB = "stigmem://test/agent/bob"
ACTOR = "admin:root"


@pytest.fixture
def research(db) -> Garden:
    """`research` (team): alice admin, bob writer."""
    alice = Caller(ALICE, "default", frozenset({"read", "write"}))
    garden, _ = create_garden_from_body(alice, {"slug": "research", "name": "Research", "scope": "team"})
    add_member_from_body(alice, "research", {"entity_uri": BOB, "role": "writer"})
    return garden


def state() -> tuple:
    return (
        sorted(Garden.objects.values_list("tenant", "slug", "name", "scope", "description")),
        sorted(GardenMember.objects.values_list("garden__slug", "entity_uri", "role")),
        AuditEvent.objects.count(),
    )


def add_data(members: list[tuple[str, str]], **garden) -> dict:
    data = {"tenant": "default", "slug": "ops", "name": "Operations", "scope": "company", "description": "", **garden}
    data.update(formset(members))
    return data


def formset(members: list[tuple[str, str]], *, initial: list[GardenMember] = (), delete: set[str] = frozenset()):
    """Inline formset data: existing members first (with their ids), then new ones."""
    rows = [(member.pk, member.entity_uri, member.role) for member in initial]
    rows += [(None, entity_uri, role) for entity_uri, role in members]
    data = {
        "members-TOTAL_FORMS": str(len(rows)),
        "members-INITIAL_FORMS": str(len(initial)),
        "members-MIN_NUM_FORMS": "0",
        "members-MAX_NUM_FORMS": "1000",
    }
    for index, (pk, entity_uri, role) in enumerate(rows):
        data[f"members-{index}-entity_uri"] = entity_uri
        data[f"members-{index}-role"] = role
        if pk is not None:
            data[f"members-{index}-id"] = str(pk)
            if entity_uri in delete:
                data[f"members-{index}-DELETE"] = "on"
    return data


def errors_of(response) -> str:
    assert response.status_code == 200  # the form is shown again
    adminform = response.context["adminform"]
    inline = response.context["inline_admin_formsets"][0].formset
    return str(adminform.form.errors) + str(inline.non_form_errors()) + str(inline.errors)


def events(event_type: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=event_type).order_by("id"))


class TestAdd:
    def test_creates_a_garden_with_normalized_slug_and_members_and_audits_it(self, browser):
        data = add_data([("  STIGMEM://Test/Agent/Alice ", "admin"), ("user:Dave Smith", "reader")], slug="  Ops-Team ")
        response = browser.post(reverse("admin:stigmem_garden_add"), data)
        assert response.status_code == 302, errors_of(response)
        garden = Garden.objects.get()
        assert (garden.tenant, garden.slug, garden.name, garden.scope, garden.created_by) == (
            "default",
            "ops-team",
            "Operations",
            "company",
            ACTOR,
        )
        assert sorted(garden.members.values_list("entity_uri", "role", "added_by")) == [
            (ALICE, "admin", ACTOR),
            ("user:dave-smith", "reader", ACTOR),
        ]
        created = events("garden_created")
        assert [(e.actor, e.target, e.tenant) for e in created] == [
            (ACTOR, f"stigmem://{node_authority()}/garden/ops-team", "default")
        ]
        assert sorted(e.detail["entity_uri"] for e in events("garden_member_added")) == [ALICE, "user:dave-smith"]

    @pytest.mark.parametrize(
        ("members", "garden", "message"),
        [
            ([(ALICE, "writer")], {}, "at least one member with the admin role"),
            ([], {}, "at least one member with the admin role"),
            ([(ALICE, "admin")], {"slug": "-bad"}, "A slug must match"),
            ([(ALICE, "admin")], {"slug": "a" * 64}, "at most 63 characters"),
            ([(ALICE, "admin")], {"scope": "galaxy"}, "Select a valid choice"),
            ([("stigmem://test/ /alice", "admin")], {}, "formal URI has an empty component"),
            ([(ALICE, "admin"), (" " + ALICE.upper(), "reader")], {}, "Please correct the duplicate"),
            ([(ALICE, "owner")], {}, "Select a valid choice"),
        ],
    )
    def test_rejected_input_creates_nothing(self, browser, members, garden, message):
        before = state()
        response = browser.post(reverse("admin:stigmem_garden_add"), add_data(members, **garden))
        assert message in errors_of(response)
        assert state() == before

    def test_a_duplicate_slug_in_the_tenant_is_refused(self, browser, research):
        before = state()
        response = browser.post(reverse("admin:stigmem_garden_add"), add_data([(ALICE, "admin")], slug="Research"))
        assert "already exists" in errors_of(response)
        assert state() == before
        other_tenant = add_data([(ALICE, "admin")], slug="research", tenant="other")
        assert browser.post(reverse("admin:stigmem_garden_add"), other_tenant).status_code == 302
        assert Garden.objects.filter(slug="research").count() == 2


class TestChange:
    def change(self, browser, garden: Garden, members=(), **kwargs):
        data = {"name": garden.name, "description": garden.description}
        data.update(formset(list(members), initial=list(garden.members.order_by("added_at", "id")), **kwargs))
        return browser.post(reverse("admin:stigmem_garden_change", args=[garden.pk]), data)

    def test_change_page_shows_the_uri_and_keeps_slug_tenant_and_scope(self, browser, research):
        page = browser.get(reverse("admin:stigmem_garden_change", args=[research.pk]))
        assert page.status_code == 200
        assert f"stigmem://{node_authority()}/garden/research".encode() in page.content
        data = {"name": "Renamed", "description": "", "slug": "hijack", "tenant": "other", "scope": "public"}
        data.update(formset([], initial=list(research.members.order_by("added_at", "id"))))
        response = browser.post(reverse("admin:stigmem_garden_change", args=[research.pk]), data)
        assert response.status_code == 302
        research.refresh_from_db()
        assert (research.name, research.slug, research.tenant, research.scope) == (
            "Renamed",
            "research",
            "default",
            "team",
        )

    def test_member_changes_are_audited(self, browser, research):
        members = list(research.members.order_by("added_at", "id"))
        data = {"name": research.name, "description": ""}
        data.update(formset([("stigmem://test/agent/Carol", "reader")], initial=members, delete={BOB}))
        data["members-0-role"] = "admin"  # alice stays admin
        data["members-1-role"] = "reader"  # bob: changed, then deleted in the same save
        response = browser.post(reverse("admin:stigmem_garden_change", args=[research.pk]), data)
        assert response.status_code == 302, errors_of(response)
        assert sorted(research.members.values_list("entity_uri", "role")) == [
            (ALICE, "admin"),
            ("stigmem://test/agent/carol", "reader"),
        ]
        removed = events("garden_member_removed")
        assert [(e.actor, e.detail["entity_uri"], e.detail["role"]) for e in removed] == [(ACTOR, BOB, "writer")]
        added = [e for e in events("garden_member_added") if e.actor == ACTOR]
        assert [e.detail["entity_uri"] for e in added] == ["stigmem://test/agent/carol"]

        data = {"name": research.name, "description": ""}
        data.update(formset([], initial=list(research.members.order_by("added_at", "id"))))
        data["members-1-role"] = "writer"
        assert browser.post(reverse("admin:stigmem_garden_change", args=[research.pk]), data).status_code == 302
        changed = events("garden_member_changed")
        assert [(e.actor, e.detail["entity_uri"], e.detail["role"], e.detail["previous_role"]) for e in changed] == [
            (ACTOR, "stigmem://test/agent/carol", "writer", "reader")
        ]

    def test_demoting_or_deleting_the_last_admin_is_refused(self, browser, research):
        before = state()
        members = list(research.members.order_by("added_at", "id"))
        data = {"name": research.name, "description": ""}
        data.update(formset([], initial=members))
        data["members-0-role"] = "writer"
        response = browser.post(reverse("admin:stigmem_garden_change", args=[research.pk]), data)
        assert "at least one member with the admin role" in errors_of(response)
        response = self.change(browser, research, delete={ALICE})
        assert "at least one member with the admin role" in errors_of(response)
        assert state() == before

    def test_a_malformed_member_uri_is_refused(self, browser, research):
        before = state()
        response = self.change(browser, research, members=[("   ", "writer")])
        assert "This field is required" in errors_of(response)
        response = self.change(browser, research, members=[("stigmem:// /agent/x", "reader")])
        assert "formal URI has an empty component" in errors_of(response)
        assert state() == before


class TestDelete:
    def test_deleting_a_garden_is_audited(self, browser, research):
        response = browser.post(reverse("admin:stigmem_garden_delete", args=[research.pk]), {"post": "yes"})
        assert response.status_code == 302
        assert not Garden.objects.exists() and not GardenMember.objects.exists()
        deleted = events("garden_deleted")
        assert [(e.actor, e.detail["garden"], e.detail["slug"]) for e in deleted] == [
            (ACTOR, str(research.pk), "research")
        ]

    def test_the_bulk_delete_action_audits_every_garden(self, browser, research):
        other, _ = create_garden_from_body(Caller(BOB, "default", frozenset({"write"})), {"slug": "b", "name": "B"})
        data = {"action": "delete_selected", "_selected_action": [str(research.pk), str(other.pk)], "post": "yes"}
        response = browser.post(reverse("admin:stigmem_garden_changelist"), data)
        assert response.status_code == 302
        assert not Garden.objects.exists()
        assert sorted(e.detail["slug"] for e in events("garden_deleted")) == ["b", "research"]


def test_changelist_search_and_filters(browser, research):
    create_garden_from_body(Caller(BOB, "other", frozenset({"write"})), {"slug": "elsewhere", "name": "E"})
    url = reverse("admin:stigmem_garden_changelist")
    everything = browser.get(url)
    assert everything.status_code == 200
    assert sorted(g.slug for g in everything.context["cl"].result_list) == ["elsewhere", "research"]
    assert [g.member_total for g in everything.context["cl"].result_list if g.slug == "research"] == [2]
    assert [g.slug for g in browser.get(url, {"q": "Resea"}).context["cl"].result_list] == ["research"]
    assert [g.slug for g in browser.get(url, {"tenant": "other"}).context["cl"].result_list] == ["elsewhere"]
    assert [g.slug for g in browser.get(url, {"scope": "team"}).context["cl"].result_list] == ["research"]
