"""Memory gardens (WIRE.md §4.2): the /v1/gardens API, its access rules, audit rows, and the
service functions the fact read and write paths use."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from stigmem import gardens
from stigmem.auth import Caller
from stigmem.errors import ApiError, InputInvalid
from stigmem.models import AuditEvent, Fact, Garden, GardenMember
from stigmem.node import node_authority

ALICE = "stigmem://test/agent/alice"
BOB = "stigmem://test/agent/bob"
CAROL = "stigmem://test/agent/carol"
MALLORY = "stigmem://test/agent/mallory"
ADMIN = "stigmem://test/agent/admin"

NOT_FOUND = {"detail": "garden not found"}
MEMBER_NOT_FOUND = {"detail": "member not found"}
ADMIN_ROLE = {"detail": "garden admin role required"}
LAST_ADMIN = {"detail": "cannot remove or demote the garden's last admin; make another member admin first"}


def uri(slug: str) -> str:
    return f"stigmem://{node_authority()}/garden/{slug}"


def state() -> tuple:
    """Everything a garden request may change: compared before and after rejected requests."""
    return (
        sorted(Garden.objects.values_list("tenant", "slug", "name", "scope", "description")),
        sorted(GardenMember.objects.values_list("garden__slug", "entity_uri", "role")),
        AuditEvent.objects.count(),
    )


def member_path(slug: str, entity_uri: str, *, encoded: bool = True) -> str:
    return f"/v1/gardens/{slug}/members/{quote(entity_uri, safe='') if encoded else entity_uri}"


def assert_422(response, loc: list, msg: str | None = None, type_: str | None = None) -> None:
    assert response.status_code == 422, response.content
    detail = response.json()["detail"]
    assert [entry["loc"] for entry in detail] == [loc], detail
    if msg is not None:
        assert detail[0]["msg"] == msg
    if type_ is not None:
        assert detail[0]["type"] == type_


def assert_invalid_entity_uri(response) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["detail"]["code"] == "invalid_entity_uri"
    assert isinstance(body["detail"]["message"], str) and body["detail"]["message"]


def parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


@pytest.fixture
def alice(make_client):
    return make_client(["read", "write"], entity=ALICE)


@pytest.fixture
def bob(make_client):
    return make_client(["read", "write"], entity=BOB)


@pytest.fixture
def carol(make_client):
    return make_client(["read", "write"], entity=CAROL)


@pytest.fixture
def mallory(make_client):
    """Same tenant, never a member of anything."""
    return make_client(["read", "write"], entity=MALLORY)


@pytest.fixture
def foreign_admin(make_client):
    """A key admin of another tenant, with the same identity as alice."""
    return make_client(["read", "write", "admin"], tenant="other", entity=ALICE)


@pytest.fixture
def research(alice, bob, carol):
    """Garden `research` (team scope): alice admin, bob writer, carol reader."""
    response = alice.post("/v1/gardens", {"slug": "research", "name": "Research", "scope": "team"}, format="json")
    assert response.status_code == 201, response.content
    for who, role in ((BOB, "writer"), (CAROL, "reader")):
        added = alice.post("/v1/gardens/research/members", {"entity_uri": who, "role": role}, format="json")
        assert added.status_code == 201, added.content
    return Garden.objects.get(slug="research")


# --- creating gardens --------------------------------------------------------------------------


class TestCreate:
    def test_creates_the_garden_with_the_creator_as_admin(self, alice):
        before = timezone.now()
        response = alice.post(
            "/v1/gardens", {"slug": "research", "name": "Research", "description": "papers"}, format="json"
        )
        assert response.status_code == 201, response.content
        body = response.json()
        garden = Garden.objects.get()
        assert body == {
            "id": str(garden.id),
            "garden_id": uri("research"),
            "slug": "research",
            "name": "Research",
            "scope": "company",
            "description": "papers",
            "created_by": ALICE,
            "created_at": body["created_at"],
            "members": [{"entity_uri": ALICE, "role": "admin", "added_by": ALICE, "added_at": body["created_at"]}],
            "quarantine": False,
        }
        assert before <= parse_time(body["created_at"]) <= timezone.now()
        assert garden.tenant == "default"
        assert list(garden.members.values_list("entity_uri", "role")) == [(ALICE, "admin")]
        event = AuditEvent.objects.filter(event_type="garden_created").get()
        assert (event.tenant, event.event_type, event.actor, event.target) == (
            "default",
            "garden_created",
            ALICE,
            uri("research"),
        )
        assert event.detail == {"garden": str(garden.id), "slug": "research", "name": "Research", "scope": "company"}

    def test_description_is_null_when_not_given(self, alice):
        response = alice.post("/v1/gardens", {"slug": "x", "name": "X", "description": None}, format="json")
        assert response.status_code == 201
        assert response.json()["description"] is None

    @pytest.mark.parametrize(
        ("raw", "stored"),
        [("UPPER", "upper"), ("  Mixed-Case-1 ", "mixed-case-1"), ("a" * 63, "a" * 63), ("0", "0"), ("a-", "a-")],
    )
    def test_slug_is_stripped_and_lowercased(self, alice, raw, stored):
        response = alice.post("/v1/gardens", {"slug": raw, "name": "G"}, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["slug"] == stored
        assert response.json()["garden_id"] == uri(stored)
        assert Garden.objects.get().slug == stored

    @pytest.mark.parametrize("slug", ["", " ", "-x", "a" * 64, "a_b", "a/b", "a b", "é", "a.b", 5, None, ["a"]])
    def test_bad_slug_is_422(self, alice, slug):
        before = state()
        response = alice.post("/v1/gardens", {"slug": slug, "name": "G"}, format="json")
        assert_422(response, ["body", "slug"], "slug must match ^[a-z0-9][a-z0-9-]{0,62}$ (after lowercasing)", "slug")
        assert state() == before

    def test_missing_slug_is_422(self, alice):
        assert_422(alice.post("/v1/gardens", {"name": "G"}, format="json"), ["body", "slug"])
        assert Garden.objects.count() == 0

    @pytest.mark.parametrize("name", ["", "   ", "n" * 201, 7, None, {"a": 1}])
    def test_bad_name_is_422(self, alice, name):
        before = state()
        response = alice.post("/v1/gardens", {"slug": "g", "name": name}, format="json")
        assert_422(response, ["body", "name"], "name must be a non-empty string of at most 200 characters")
        assert state() == before

    def test_name_is_required_and_may_have_200_characters(self, alice):
        assert_422(alice.post("/v1/gardens", {"slug": "g"}, format="json"), ["body", "name"])
        response = alice.post("/v1/gardens", {"slug": "g", "name": "n" * 200}, format="json")
        assert response.status_code == 201
        assert response.json()["name"] == "n" * 200

    @pytest.mark.parametrize("scope", ["global", "", "Company", None, 1, "*"])
    def test_bad_scope_is_422(self, alice, scope):
        before = state()
        response = alice.post("/v1/gardens", {"slug": "g", "name": "G", "scope": scope}, format="json")
        assert_422(response, ["body", "scope"], "scope must be one of local, team, company, public", "literal_error")
        assert state() == before

    @pytest.mark.parametrize("scope", ["local", "team", "company", "public"])
    def test_every_scope_is_accepted(self, alice, scope):
        response = alice.post("/v1/gardens", {"slug": "g", "name": "G", "scope": scope}, format="json")
        assert response.status_code == 201
        assert response.json()["scope"] == scope

    @pytest.mark.parametrize(("field", "value"), [("description", 5), ("description", "d" * 4001)])
    def test_bad_description_is_422(self, alice, field, value):
        before = state()
        response = alice.post("/v1/gardens", {"slug": "g", "name": "G", field: value}, format="json")
        assert_422(response, ["body", "description"], "description must be a string of at most 4000 characters")
        assert state() == before

    @pytest.mark.parametrize("field", ["name", "description"])
    def test_nul_characters_are_422(self, alice, field):
        body = {"slug": "g", "name": "G", field: "a\x00b"}
        assert_422(
            alice.post("/v1/gardens", body, format="json"), ["body", field], f"{field} must not contain NUL characters"
        )
        assert Garden.objects.count() == 0

    def test_every_bad_field_is_reported(self, alice):
        response = alice.post("/v1/gardens", {"slug": "-", "name": "", "scope": "x"}, format="json")
        assert response.status_code == 422
        assert [entry["loc"] for entry in response.json()["detail"]] == [
            ["body", "slug"],
            ["body", "name"],
            ["body", "scope"],
        ]

    @pytest.mark.parametrize("body", [[1, 2], "slug", 3])
    def test_body_must_be_an_object(self, alice, body):
        assert_422(alice.post("/v1/gardens", body, format="json"), ["body"], "expected a JSON object")
        assert Garden.objects.count() == 0

    @pytest.mark.parametrize("slug", ["research", "RESEARCH", " research "])
    def test_duplicate_slug_in_the_tenant_is_409(self, alice, bob, slug):
        assert alice.post("/v1/gardens", {"slug": "research", "name": "R"}, format="json").status_code == 201
        before = state()
        response = bob.post("/v1/gardens", {"slug": slug, "name": "Other"}, format="json")
        assert response.status_code == 409
        assert response.json() == {"detail": "a garden with slug 'research' already exists"}
        assert state() == before

    def test_the_same_slug_in_another_tenant_is_a_different_garden(self, alice, foreign_admin):
        first = alice.post("/v1/gardens", {"slug": "research", "name": "R"}, format="json")
        second = foreign_admin.post("/v1/gardens", {"slug": "research", "name": "R"}, format="json")
        assert first.status_code == second.status_code == 201
        assert first.json()["id"] != second.json()["id"]
        assert sorted(Garden.objects.values_list("tenant", flat=True)) == ["default", "other"]

    def test_unknown_fields_are_ignored(self, alice):
        body = {"slug": "g", "name": "G", "quarantine": True, "tenant": "other", "members": [BOB]}
        response = alice.post("/v1/gardens", body, format="json")
        assert response.status_code == 201
        garden = Garden.objects.get()
        assert (garden.tenant, garden.quarantine, response.json()["quarantine"]) == ("default", False, False)
        assert list(garden.members.values_list("entity_uri", flat=True)) == [ALICE]

    def test_needs_the_write_permission(self, make_client, anon, db):
        reader = make_client(["read"], entity=ALICE)
        before = state()
        response = reader.post("/v1/gardens", {"slug": "g", "name": "G"}, format="json")
        assert response.status_code == 403
        assert response.json() == {"detail": "write permission required"}
        assert anon.post("/v1/gardens", {"slug": "g", "name": "G"}, format="json").status_code == 401
        assert state() == before


# --- reading gardens ---------------------------------------------------------------------------


class TestRead:
    def test_list_is_a_bare_array_of_the_callers_gardens_with_members(self, research, alice, bob, mallory):
        other = bob.post("/v1/gardens", {"slug": "bobs", "name": "Bob's", "scope": "local"}, format="json")
        assert other.status_code == 201
        mine = alice.get("/v1/gardens")
        assert mine.status_code == 200
        assert [g["slug"] for g in mine.json()] == ["research"]
        listed = mine.json()[0]
        assert listed == alice.get("/v1/gardens/research").json()
        assert [(m["entity_uri"], m["role"]) for m in listed["members"]] == [
            (ALICE, "admin"),
            (BOB, "writer"),
            (CAROL, "reader"),
        ]
        assert [g["slug"] for g in bob.get("/v1/gardens").json()] == ["research", "bobs"]
        assert mallory.get("/v1/gardens").json() == []

    def test_key_admins_list_every_garden_of_their_tenant_only(self, research, admin_client, foreign_admin):
        assert foreign_admin.post("/v1/gardens", {"slug": "theirs", "name": "T"}, format="json").status_code == 201
        assert [g["slug"] for g in admin_client.get("/v1/gardens").json()] == ["research"]
        assert [g["slug"] for g in foreign_admin.get("/v1/gardens").json()] == ["theirs"]

    @pytest.mark.parametrize("ref", ["research", "RESEARCH", "id"])
    def test_members_get_the_garden_by_slug_or_id(self, research, alice, carol, ref):
        ref = str(research.id) if ref == "id" else ref
        for client in (alice, carol):
            response = client.get(f"/v1/gardens/{ref}")
            assert response.status_code == 200
            body = response.json()
            assert (body["id"], body["slug"], body["scope"], body["name"]) == (
                str(research.id),
                "research",
                "team",
                "Research",
            )
            assert [(m["entity_uri"], m["role"], m["added_by"]) for m in body["members"]] == [
                (ALICE, "admin", ALICE),
                (BOB, "writer", ALICE),
                (CAROL, "reader", ALICE),
            ]
            for member in body["members"]:
                parse_time(member["added_at"])

    def test_key_admins_get_any_garden_of_their_tenant(self, research, admin_client):
        assert admin_client.get("/v1/gardens/research").json()["id"] == str(research.id)
        assert [m["entity_uri"] for m in admin_client.get("/v1/gardens/research/members").json()] == [ALICE, BOB, CAROL]

    @pytest.mark.parametrize("path", ["/v1/gardens/research", "/v1/gardens/research/members"])
    def test_non_members_and_other_tenants_get_404(self, research, mallory, foreign_admin, path):
        for client in (mallory, foreign_admin):
            response = client.get(path)
            assert response.status_code == 404
            assert response.json() == NOT_FOUND
        response = foreign_admin.get(path.replace("research", str(research.id)))
        assert response.json() == NOT_FOUND

    @pytest.mark.parametrize("ref", ["nope", str(uuid.uuid4()), "a%00b", "-", "x" * 300])
    def test_unknown_garden_is_404(self, research, admin_client, ref):
        for path in (f"/v1/gardens/{ref}", f"/v1/gardens/{ref}/members"):
            response = admin_client.get(path)
            assert response.status_code == 404
            assert response.json() == NOT_FOUND

    def test_an_id_wins_over_a_slug_that_looks_like_one(self, research, alice):
        response = alice.post("/v1/gardens", {"slug": str(research.id), "name": "Shadow"}, format="json")
        assert response.status_code == 201
        assert alice.get(f"/v1/gardens/{research.id}").json()["name"] == "Research"

    def test_members_list_is_an_array_oldest_first(self, research, carol):
        response = carol.get("/v1/gardens/research/members")
        assert response.status_code == 200
        assert [(m["entity_uri"], m["role"], m["added_by"]) for m in response.json()] == [
            (ALICE, "admin", ALICE),
            (BOB, "writer", ALICE),
            (CAROL, "reader", ALICE),
        ]


# --- deleting gardens --------------------------------------------------------------------------


def garden_fact(garden: Garden) -> Fact:
    return Fact.objects.create(
        seq=1_000_000,
        tenant=garden.tenant,
        entity="stigmem://test/user/x",
        relation="memory:note",
        value_type="string",
        value_v="secret",
        source=ALICE,
        confidence=1.0,
        scope=garden.scope,
        garden=str(garden.id),
        timestamp=timezone.now(),
        hlc="1.0",
        cid="sha256:" + "0" * 64,
    )


class TestDelete:
    @pytest.mark.parametrize("ref", ["research", "id"])
    def test_garden_admin_deletes_the_garden_and_its_members_but_not_its_facts(self, research, alice, ref):
        fact = garden_fact(research)
        response = alice.delete(f"/v1/gardens/{research.id if ref == 'id' else ref}")
        assert response.status_code == 204
        assert response.content == b""
        assert not Garden.objects.exists()
        assert not GardenMember.objects.exists()
        assert Fact.objects.get(pk=fact.pk).garden == str(research.id)
        assert gardens.member_garden_ids(Caller(ALICE, "default", frozenset({"read"}))) == set()
        event = AuditEvent.objects.filter(event_type="garden_deleted").get()
        assert (event.actor, event.target) == (ALICE, uri("research"))
        assert event.detail == {"garden": str(research.id), "slug": "research", "name": "Research", "scope": "team"}
        assert alice.get("/v1/gardens/research").status_code == 404

    def test_recreating_a_deleted_slug_makes_a_new_garden(self, research, alice):
        assert alice.delete("/v1/gardens/research").status_code == 204
        again = alice.post("/v1/gardens", {"slug": "research", "name": "Again"}, format="json")
        assert again.status_code == 201
        assert again.json()["id"] != str(research.id)

    def test_key_admin_deletes_any_garden_of_the_tenant(self, research, admin_client):
        assert admin_client.delete("/v1/gardens/research").status_code == 204
        event = AuditEvent.objects.filter(event_type="garden_deleted").get()
        assert event.actor == ADMIN
        assert not Garden.objects.exists()

    @pytest.mark.parametrize("who", ["bob", "carol"])
    def test_writers_and_readers_get_403(self, research, request, who):
        before = state()
        response = request.getfixturevalue(who).delete("/v1/gardens/research")
        assert response.status_code == 403
        assert response.json() == ADMIN_ROLE
        assert state() == before

    def test_non_members_other_tenants_and_unknown_gardens_get_404(self, research, mallory, foreign_admin):
        before = state()
        for client, path in (
            (mallory, "/v1/gardens/research"),
            (foreign_admin, "/v1/gardens/research"),
            (foreign_admin, f"/v1/gardens/{research.id}"),
            (mallory, "/v1/gardens/nope"),
        ):
            response = client.delete(path)
            assert response.status_code == 404
            assert response.json() == NOT_FOUND
        assert state() == before

    def test_a_read_only_key_cannot_delete_even_as_garden_admin(self, research, make_client):
        reader = make_client(["read"], entity=ALICE)
        before = state()
        response = reader.delete("/v1/gardens/research")
        assert response.status_code == 403
        assert response.json() == {"detail": "write permission required"}
        assert state() == before


# --- members -----------------------------------------------------------------------------------


class TestAddMember:
    def test_garden_admin_adds_a_member(self, research, alice):
        response = alice.post("/v1/gardens/research/members", {"entity_uri": MALLORY, "role": "writer"}, format="json")
        assert response.status_code == 201
        body = response.json()
        assert body == {"entity_uri": MALLORY, "role": "writer", "added_by": ALICE, "added_at": body["added_at"]}
        parse_time(body["added_at"])
        assert research.members.get(entity_uri=MALLORY).role == "writer"
        event = AuditEvent.objects.filter(event_type="garden_member_added").last()
        assert (event.actor, event.target) == (ALICE, uri("research"))
        assert event.detail == {"garden": str(research.id), "slug": "research", "entity_uri": MALLORY, "role": "writer"}

    def test_role_defaults_to_reader(self, research, alice):
        response = alice.post("/v1/gardens/research/members", {"entity_uri": MALLORY}, format="json")
        assert response.status_code == 201
        assert response.json()["role"] == "reader"

    @pytest.mark.parametrize(
        ("raw", "stored"),
        [
            ("  STIGMEM://Test/Agent/Dave  ", "stigmem://test/agent/dave"),
            ("stigmem://test/user/Dave  Smith", "stigmem://test/user/dave-smith"),
            ("user:Dave Smith", "user:dave-smith"),
        ],
    )
    def test_entity_uri_is_normalized(self, research, alice, raw, stored):
        response = alice.post("/v1/gardens/research/members", {"entity_uri": raw}, format="json")
        assert response.status_code == 201
        assert response.json()["entity_uri"] == stored
        assert research.members.filter(entity_uri=stored).exists()

    @pytest.mark.parametrize("raw", [BOB, "STIGMEM://test/agent/BOB", f" {BOB} "])
    def test_existing_member_is_409(self, research, alice, raw):
        before = state()
        response = alice.post("/v1/gardens/research/members", {"entity_uri": raw, "role": "admin"}, format="json")
        assert response.status_code == 409
        assert response.json() == {"detail": f"{BOB} is already a member with role 'writer'; use PATCH to change it"}
        assert state() == before

    @pytest.mark.parametrize("role", ["owner", "Admin", "", 3, None, ["admin"]])
    def test_bad_role_is_422(self, research, alice, role):
        before = state()
        response = alice.post("/v1/gardens/research/members", {"entity_uri": MALLORY, "role": role}, format="json")
        assert_422(response, ["body", "role"], "role must be one of admin, writer, reader", "literal_error")
        assert state() == before

    @pytest.mark.parametrize("entity_uri", ["", 5, None, "x" * 513])
    def test_bad_entity_uri_field_is_422(self, research, alice, entity_uri):
        before = state()
        response = alice.post("/v1/gardens/research/members", {"entity_uri": entity_uri}, format="json")
        assert_422(response, ["body", "entity_uri"], "entity_uri must be a non-empty string of at most 512 characters")
        assert state() == before

    def test_missing_entity_uri_is_422(self, research, alice):
        assert_422(
            alice.post("/v1/gardens/research/members", {"role": "reader"}, format="json"), ["body", "entity_uri"]
        )

    @pytest.mark.parametrize("entity_uri", ["   ", "stigmem://test/ /bob", "stigmem:// /agent/bob", "a\x00b"])
    def test_malformed_entity_uri_is_400(self, research, alice, entity_uri):
        before = state()
        response = alice.post("/v1/gardens/research/members", {"entity_uri": entity_uri}, format="json")
        assert_invalid_entity_uri(response)
        assert state() == before

    def test_body_must_be_an_object(self, research, alice):
        assert_422(
            alice.post("/v1/gardens/research/members", [MALLORY], format="json"), ["body"], "expected a JSON object"
        )

    @pytest.mark.parametrize("who", ["bob", "carol"])
    def test_writers_and_readers_get_403(self, research, request, who):
        before = state()
        client = request.getfixturevalue(who)
        response = client.post("/v1/gardens/research/members", {"entity_uri": MALLORY, "role": "admin"}, format="json")
        assert response.status_code == 403
        assert response.json() == ADMIN_ROLE
        assert state() == before

    def test_non_members_other_tenants_and_unknown_gardens_get_404(self, research, mallory, foreign_admin):
        before = state()
        body = {"entity_uri": MALLORY, "role": "admin"}
        for client, path in (
            (mallory, "/v1/gardens/research/members"),
            (foreign_admin, "/v1/gardens/research/members"),
            (foreign_admin, f"/v1/gardens/{research.id}/members"),
            (mallory, "/v1/gardens/nope/members"),
        ):
            response = client.post(path, body, format="json")
            assert response.status_code == 404
            assert response.json() == NOT_FOUND
        assert state() == before

    def test_key_admin_adds_members_to_any_garden_of_the_tenant(self, research, admin_client):
        response = admin_client.post("/v1/gardens/research/members", {"entity_uri": MALLORY}, format="json")
        assert response.status_code == 201
        assert response.json()["added_by"] == ADMIN

    def test_a_new_member_sees_the_garden(self, research, alice, mallory):
        assert mallory.get("/v1/gardens/research").status_code == 404
        assert alice.post("/v1/gardens/research/members", {"entity_uri": MALLORY}, format="json").status_code == 201
        assert mallory.get("/v1/gardens/research").status_code == 200
        assert [g["slug"] for g in mallory.get("/v1/gardens").json()] == ["research"]


class TestChangeMember:
    @pytest.mark.parametrize("encoded", [True, False])
    def test_garden_admin_changes_a_role(self, research, alice, encoded):
        response = alice.patch(member_path("research", BOB, encoded=encoded), {"role": "admin"}, format="json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["entity_uri"] == BOB and body["role"] == "admin" and body["added_by"] == ALICE
        assert research.members.get(entity_uri=BOB).role == "admin"
        event = AuditEvent.objects.filter(event_type="garden_member_changed").get()
        assert (event.actor, event.target) == (ALICE, uri("research"))
        assert event.detail == {
            "garden": str(research.id),
            "slug": "research",
            "entity_uri": BOB,
            "role": "admin",
            "previous_role": "writer",
        }

    def test_the_path_uri_is_normalized(self, research, alice):
        response = alice.patch(member_path("research", "STIGMEM://Test/agent/Bob"), {"role": "reader"}, format="json")
        assert response.status_code == 200
        assert response.json()["entity_uri"] == BOB
        assert research.members.get(entity_uri=BOB).role == "reader"

    def test_setting_the_same_role_changes_nothing(self, research, alice):
        before = state()
        response = alice.patch(member_path("research", BOB), {"role": "writer"}, format="json")
        assert response.status_code == 200
        assert response.json()["role"] == "writer"
        assert state() == before

    def test_demoting_the_last_admin_is_403(self, research, alice):
        before = state()
        response = alice.patch(member_path("research", ALICE), {"role": "writer"}, format="json")
        assert response.status_code == 403
        assert response.json() == LAST_ADMIN
        assert state() == before

    def test_an_admin_may_be_demoted_while_another_remains(self, research, alice, bob):
        assert alice.patch(member_path("research", BOB), {"role": "admin"}, format="json").status_code == 200
        response = bob.patch(member_path("research", ALICE), {"role": "reader"}, format="json")
        assert response.status_code == 200
        assert research.members.get(entity_uri=ALICE).role == "reader"
        # Alice is a reader now: she manages nothing any more, and bob is the last admin.
        assert alice.patch(member_path("research", CAROL), {"role": "admin"}, format="json").json() == ADMIN_ROLE
        assert bob.patch(member_path("research", BOB), {"role": "reader"}, format="json").json() == LAST_ADMIN

    @pytest.mark.parametrize("body", [{"role": "owner"}, {"role": None}, {}, {"role": 1}])
    def test_bad_role_is_422(self, research, alice, body):
        before = state()
        response = alice.patch(member_path("research", BOB), body, format="json")
        assert_422(response, ["body", "role"], "role must be one of admin, writer, reader")
        assert state() == before

    def test_unknown_member_is_404(self, research, alice):
        before = state()
        response = alice.patch(member_path("research", MALLORY), {"role": "reader"}, format="json")
        assert response.status_code == 404
        assert response.json() == MEMBER_NOT_FOUND
        assert state() == before

    @pytest.mark.parametrize("entity_uri", ["%20%20", "stigmem://test/%20/bob", "a%00b"])
    def test_malformed_path_uri_is_400(self, research, alice, entity_uri):
        before = state()
        response = alice.patch(f"/v1/gardens/research/members/{entity_uri}", {"role": "reader"}, format="json")
        assert_invalid_entity_uri(response)
        assert state() == before

    @pytest.mark.parametrize("who", ["bob", "carol"])
    def test_writers_and_readers_get_403(self, research, request, who):
        before = state()
        response = request.getfixturevalue(who).patch(member_path("research", CAROL), {"role": "admin"}, format="json")
        assert response.status_code == 403
        assert response.json() == ADMIN_ROLE
        assert state() == before

    def test_non_members_and_other_tenants_get_404(self, research, mallory, foreign_admin):
        before = state()
        for client in (mallory, foreign_admin):
            response = client.patch(member_path("research", BOB), {"role": "admin"}, format="json")
            assert response.status_code == 404
            assert response.json() == NOT_FOUND
        assert state() == before


class TestRemoveMember:
    @pytest.mark.parametrize("encoded", [True, False])
    def test_garden_admin_removes_a_member(self, research, alice, bob, encoded):
        response = alice.delete(member_path("research", BOB, encoded=encoded))
        assert response.status_code == 204
        assert not research.members.filter(entity_uri=BOB).exists()
        event = AuditEvent.objects.filter(event_type="garden_member_removed").get()
        assert (event.actor, event.target) == (ALICE, uri("research"))
        assert event.detail == {"garden": str(research.id), "slug": "research", "entity_uri": BOB, "role": "writer"}
        assert bob.get("/v1/gardens/research").status_code == 404

    def test_removing_the_last_admin_is_403(self, research, alice, admin_client):
        before = state()
        for client in (alice, admin_client):
            response = client.delete(member_path("research", ALICE))
            assert response.status_code == 403
            assert response.json() == LAST_ADMIN
        assert state() == before

    def test_an_admin_may_leave_while_another_remains(self, research, alice, bob):
        assert alice.patch(member_path("research", BOB), {"role": "admin"}, format="json").status_code == 200
        assert alice.delete(member_path("research", ALICE)).status_code == 204
        assert list(research.members.filter(role="admin").values_list("entity_uri", flat=True)) == [BOB]

    def test_unknown_member_is_404(self, research, alice):
        before = state()
        response = alice.delete(member_path("research", MALLORY))
        assert response.status_code == 404
        assert response.json() == MEMBER_NOT_FOUND
        assert state() == before

    def test_malformed_path_uri_is_400(self, research, alice):
        before = state()
        assert_invalid_entity_uri(alice.delete("/v1/gardens/research/members/%20"))
        assert state() == before

    @pytest.mark.parametrize("who", ["bob", "carol"])
    def test_writers_and_readers_get_403(self, research, request, who):
        before = state()
        response = request.getfixturevalue(who).delete(member_path("research", CAROL))
        assert response.status_code == 403
        assert response.json() == ADMIN_ROLE
        assert state() == before

    def test_non_members_other_tenants_and_unknown_gardens_get_404(self, research, mallory, foreign_admin):
        before = state()
        for client, slug in ((mallory, "research"), (foreign_admin, "research"), (mallory, "nope")):
            response = client.delete(member_path(slug, BOB))
            assert response.status_code == 404
            assert response.json() == NOT_FOUND
        assert state() == before

    def test_member_routes_do_not_collide(self, research, alice):
        # `members` itself is the list route; a member URI that ends in `/members` is a member path.
        assert alice.patch("/v1/gardens/research/members", {"role": "admin"}, format="json").status_code == 405
        response = alice.delete(member_path("research", "stigmem://test/agent/members", encoded=False))
        assert response.json() == MEMBER_NOT_FOUND
        assert alice.get("/v1/gardens/research/members/").status_code == 404
        assert research.members.count() == 3


# --- services for the fact paths -----------------------------------------------------------------


def caller(entity: str, tenant: str = "default", *permissions: str) -> Caller:
    return Caller(entity, tenant, frozenset(permissions or ("read", "write")))


@pytest.fixture
def layout(research, alice, foreign_admin, admin_client):
    """research (alice admin, bob writer, carol reader), notes (alice reader), mallory's `solo`,
    and an `other`-tenant garden whose member has alice's identity."""
    notes = admin_client.post("/v1/gardens", {"slug": "notes", "name": "N", "scope": "public"}, format="json")
    assert notes.status_code == 201
    assert admin_client.post("/v1/gardens/notes/members", {"entity_uri": ALICE}, format="json").status_code == 201
    solo = Caller(MALLORY, "default", frozenset({"read", "write"}))
    gardens.create_garden_from_body(solo, {"slug": "solo", "name": "S"})
    assert foreign_admin.post("/v1/gardens", {"slug": "research", "name": "R"}, format="json").status_code == 201
    return {g.slug if g.tenant == "default" else f"other:{g.slug}": g for g in Garden.objects.all()}


class TestMemberGardenIds:
    def test_gardens_of_the_callers_tenant_with_any_role(self, layout, django_assert_num_queries):
        with django_assert_num_queries(1):
            ids = gardens.member_garden_ids(caller(ALICE))
        assert ids == {layout["research"].id, layout["notes"].id}
        assert gardens.member_garden_ids(caller(CAROL)) == {layout["research"].id}
        assert gardens.member_garden_ids(caller(MALLORY)) == {layout["solo"].id}
        assert gardens.member_garden_ids(caller(ALICE, "other")) == {layout["other:research"].id}

    def test_the_admin_permission_adds_no_membership(self, layout):
        assert gardens.member_garden_ids(caller(ADMIN, "default", "admin")) == {layout["notes"].id}
        assert gardens.member_garden_ids(caller("stigmem://test/agent/nobody", "default", "admin")) == set()


def api_error(excinfo) -> tuple[int, object]:
    return excinfo.value.status, excinfo.value.body()


class TestGardenForWrite:
    @pytest.mark.parametrize("who", [ALICE, BOB])
    def test_writers_and_admins_get_the_garden(self, layout, who):
        assert gardens.garden_for_write(caller(who), "research", "team") == layout["research"]

    def test_readers_get_403(self, layout):
        with pytest.raises(ApiError) as excinfo:
            gardens.garden_for_write(caller(CAROL), "research", "team")
        assert api_error(excinfo) == (403, {"detail": "garden writer or admin role required"})

    @pytest.mark.parametrize(
        ("who", "slug", "tenant"),
        [
            (MALLORY, "research", "default"),  # not a member
            (ADMIN, "research", "default"),  # key admins are not members
            (ALICE, "nope", "default"),  # unknown
            (ALICE, "solo", "other"),  # another tenant's name space
            (ALICE, "a\x00b", "default"),
        ],
    )
    def test_unknown_or_not_a_member_is_404(self, layout, who, slug, tenant):
        with pytest.raises(ApiError) as excinfo:
            gardens.garden_for_write(caller(who, tenant, "read", "write", "admin"), slug, "team")
        assert api_error(excinfo) == (404, {"detail": "garden not found"})

    def test_scope_mismatch_is_422(self, layout):
        with pytest.raises(InputInvalid) as excinfo:
            gardens.garden_for_write(caller(BOB), "research", "company")
        assert api_error(excinfo) == (
            422,
            {
                "detail": [
                    {
                        "loc": ["body", "scope"],
                        "msg": "scope mismatch: garden scope is 'team' but fact scope is 'company'",
                        "type": "scope_mismatch",
                    }
                ]
            },
        )

    def test_scope_mismatch_location_can_point_at_a_batch_item(self, layout):
        with pytest.raises(ApiError) as excinfo:
            gardens.garden_for_write(caller(ALICE), "notes", "team", loc=("body", "facts", 3))
        # alice is only a reader of `notes`: the role is checked before the scope.
        assert excinfo.value.status == 403
        with pytest.raises(InputInvalid) as excinfo:
            gardens.garden_for_write(caller(ALICE), "research", "local", loc=("body", "facts", 3))
        assert excinfo.value.detail[0]["loc"] == ["body", "facts", 3, "scope"]


class TestGardenForQuery:
    @pytest.mark.parametrize("who", [ALICE, BOB, CAROL])
    def test_members_get_the_garden(self, layout, who):
        assert gardens.garden_for_query(caller(who), uri("research")) == layout["research"]

    def test_only_the_slug_of_the_uri_is_used(self, layout):
        assert gardens.garden_for_query(caller(ALICE), "stigmem://elsewhere/garden/Research") == layout["research"]
        assert gardens.garden_for_query(caller(ALICE, "other"), uri("research")) == layout["other:research"]

    @pytest.mark.parametrize("who", [MALLORY, ADMIN])
    def test_non_members_get_403(self, layout, who):
        with pytest.raises(ApiError) as excinfo:
            gardens.garden_for_query(caller(who, "default", "read", "admin"), uri("research"))
        assert api_error(excinfo) == (403, {"detail": "not a member of this garden"})

    @pytest.mark.parametrize(
        "garden_uri",
        [uri("nope"), "research", "", "stigmem://x/garden/", "stigmem://x/notgarden/research", uri("a\x00b")],
    )
    def test_unknown_or_malformed_is_404(self, layout, garden_uri):
        with pytest.raises(ApiError) as excinfo:
            gardens.garden_for_query(caller(ALICE), garden_uri)
        assert api_error(excinfo) == (404, {"detail": "garden not found"})

    def test_another_tenants_garden_is_404(self, layout):
        with pytest.raises(ApiError) as excinfo:
            gardens.garden_for_query(caller(MALLORY, "other"), uri("solo"))
        assert excinfo.value.status == 404


class TestGardenUris:
    def test_uris_by_id_without_deleted_gardens(self, layout, alice, django_assert_num_queries):
        research, notes = layout["research"], layout["notes"]
        assert alice.delete("/v1/gardens/research").status_code == 204
        with django_assert_num_queries(1):
            found = gardens.garden_uris([research.id, notes.id, notes.id, uuid.uuid4()])
        assert found == {notes.id: uri("notes")}

    def test_no_ids_no_query(self, db, django_assert_num_queries):
        with django_assert_num_queries(0):
            assert gardens.garden_uris([]) == {}
