"""Memory gardens: named groups of facts visible only to their members (WIRE.md §4.2).

A garden belongs to one tenant and has members with a role each: ``admin`` manages the garden
and its members, ``writer`` may assert facts into it, ``reader`` may only read them. Facts keep
the garden's UUID (``Fact.garden``), so a garden deleted and re-created under the same slug never
exposes the old garden's facts to the new members.

Visibility rules, everywhere: another tenant's garden does not exist (404). Inside the tenant, a
caller who is not a member learns nothing about a garden either (404), except callers whose key
has the ``admin`` permission: they may see and manage every garden of their tenant (but reading
the garden's *facts* still needs membership). Members without the garden ``admin`` role get 403
on management actions.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from stigmem import audit
from stigmem.auth import Caller
from stigmem.errors import ApiError, InputInvalid, coded, field_error, forbidden, invalid, not_found
from stigmem.fact_input import SCOPES, parse_garden_uri
from stigmem.limits import MAX_URI_LENGTH
from stigmem.models import Garden, GardenMember
from stigmem.node import node_authority
from stigmem.normalize import UriInvalid, normalize_uri
from stigmem.values import text_problem

SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ROLES: tuple[str, ...] = tuple(Garden.Role.values)
DEFAULT_SCOPE = "company"
MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 4000

ADMIN_ROLE_REQUIRED = "garden admin role required"
WRITE_ROLE_REQUIRED = "garden writer or admin role required"
NOT_A_MEMBER = "not a member of this garden"
LAST_ADMIN = "cannot remove or demote the garden's last admin; make another member admin first"


def garden_uri_for(slug: str) -> str:
    """The garden URI clients use in ``garden_id``: ``stigmem://<node authority>/garden/<slug>``."""
    return f"stigmem://{node_authority()}/garden/{slug}"


def normalize_slug(raw: str) -> str | None:
    """The stored form of a requested slug (stripped, lowercased), or None if it is not a valid slug."""
    slug = raw.strip().lower()
    return slug if SLUG_PATTERN.fullmatch(slug) else None


# --- services for the fact read and write paths ----------------------------------------------


def member_garden_ids(caller: Caller) -> set[uuid.UUID]:
    """Ids of the caller's tenant's gardens in which the caller has any role (one indexed query)."""
    return set(
        GardenMember.objects.filter(entity_uri=caller.entity_uri, garden__tenant=caller.tenant).values_list(
            "garden_id", flat=True
        )
    )


def garden_for_write(caller: Caller, slug: str, fact_scope: str, *, loc: Sequence[str | int] = ("body",)) -> Garden:
    """The garden a fact is asserted into, if the caller may write there with this scope.

    404 when the garden is unknown in the tenant or the caller is not a member (existence is not
    revealed), 403 for readers, 422 (at ``[*loc, "scope"]``) when the fact's scope is not the
    garden's. ``loc`` lets batch writes point at their item.
    """
    if text_problem(slug) is not None:
        raise not_found("garden")
    membership = (
        GardenMember.objects.filter(garden__tenant=caller.tenant, garden__slug=slug, entity_uri=caller.entity_uri)
        .select_related("garden")
        .first()
    )
    if membership is None:
        raise not_found("garden")
    if membership.role not in (Garden.Role.ADMIN, Garden.Role.WRITER):
        raise forbidden(WRITE_ROLE_REQUIRED)
    garden = membership.garden
    if fact_scope != garden.scope:
        raise invalid(
            [*loc, "scope"],
            f"scope mismatch: garden scope is '{garden.scope}' but fact scope is '{fact_scope}'",
            "scope_mismatch",
        )
    return garden


def require_writer(caller: Caller, garden_id: str) -> None:
    """403 unless the caller is a writer or admin member of the garden with this id."""
    role = (
        GardenMember.objects.filter(garden_id=garden_id, garden__tenant=caller.tenant, entity_uri=caller.entity_uri)
        .values_list("role", flat=True)
        .first()
    )
    if role not in (Garden.Role.ADMIN, Garden.Role.WRITER):
        raise forbidden(WRITE_ROLE_REQUIRED)


def garden_for_query(caller: Caller, garden_uri: str) -> Garden:
    """The garden a fact query is restricted to (``garden_id``): 404 unknown, 403 not a member.

    Only the URI's slug is used (WIRE.md §2.1); a string that is not a garden URI names no garden.
    """
    slug = parse_garden_uri(garden_uri) if text_problem(garden_uri) is None else None
    member = GardenMember.objects.filter(garden=OuterRef("pk"), entity_uri=caller.entity_uri)
    garden = (
        Garden.objects.filter(tenant=caller.tenant, slug=slug).annotate(is_member=Exists(member)).first()
        if slug
        else None
    )
    if garden is None:
        raise not_found("garden")
    if not garden.is_member:
        raise forbidden(NOT_A_MEMBER)
    return garden


def garden_uris(ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Garden URIs by garden id, for building fact records; deleted gardens are absent."""
    wanted = set(ids)
    if not wanted:
        return {}
    return {gid: garden_uri_for(slug) for gid, slug in Garden.objects.filter(id__in=wanted).values_list("id", "slug")}


# --- records -----------------------------------------------------------------------------------


def member_record(member: GardenMember) -> dict[str, Any]:
    return {
        "entity_uri": member.entity_uri,
        "role": member.role,
        "added_by": member.added_by,
        "added_at": member.added_at.isoformat(),
    }


def garden_record(garden: Garden, members: Iterable[GardenMember]) -> dict[str, Any]:
    return {
        "id": str(garden.id),
        "garden_id": garden_uri_for(garden.slug),
        "slug": garden.slug,
        "name": garden.name,
        "scope": garden.scope,
        # Null when none was given, like the reference.
        "description": garden.description or None,
        "created_by": garden.created_by,
        "created_at": garden.created_at.isoformat(),
        "members": [member_record(member) for member in members],
        "quarantine": garden.quarantine,
    }


def members_of(garden: Garden) -> QuerySet[GardenMember]:
    return garden.members.order_by("added_at", "id")


# --- body validation ---------------------------------------------------------------------------


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    return body


def _text_errors(name: str, value: Any, errors: list) -> None:
    if isinstance(value, str) and (problem := text_problem(value)) is not None:
        errors.append(field_error(["body", name], f"{name} {problem}", "string_unicode"))


def _role(body: dict[str, Any], default: str | None, errors: list) -> str:
    role = body.get("role", default)
    if role not in ROLES:
        errors.append(field_error(["body", "role"], f"role must be one of {', '.join(ROLES)}", "literal_error"))
    return role


def _entity_uri(raw: str) -> str:
    """A member's entity URI, normalized like fact entities; 400 ``invalid_entity_uri`` if malformed."""
    problem = text_problem(raw)
    if problem is not None:
        raise coded(400, "invalid_entity_uri", f"entity_uri {problem}")
    try:
        return normalize_uri(raw).uri
    except UriInvalid as exc:
        raise coded(400, "invalid_entity_uri", str(exc)) from None


def _parse_member_body(body: Any) -> tuple[str, str]:
    body = _object(body)
    errors: list = []
    raw_uri = body.get("entity_uri")
    if not isinstance(raw_uri, str) or not raw_uri or len(raw_uri) > MAX_URI_LENGTH:
        errors.append(
            field_error(
                ["body", "entity_uri"],
                f"entity_uri must be a non-empty string of at most {MAX_URI_LENGTH} characters",
                "string_type",
            )
        )
    role = _role(body, Garden.Role.READER, errors)
    if errors:
        raise InputInvalid(errors)
    return _entity_uri(raw_uri), role


# --- gardens -----------------------------------------------------------------------------------


def _lookup(tenant: str, ref: str, *, for_update: bool = False) -> Garden | None:
    """A garden of the tenant by id or slug. An id wins over a slug that looks like one."""
    if text_problem(ref) is not None:
        return None
    gardens = Garden.objects.filter(tenant=tenant)
    if for_update:
        gardens = gardens.select_for_update()
    try:
        garden_id = uuid.UUID(ref.strip())
    except ValueError:
        garden_id = None
    if garden_id is not None and (garden := gardens.filter(id=garden_id).first()) is not None:
        return garden
    return gardens.filter(slug=ref.strip().lower()).first()


def _role_of(garden: Garden, entity_uri: str) -> str | None:
    return garden.members.filter(entity_uri=entity_uri).values_list("role", flat=True).first()


def visible_garden(caller: Caller, ref: str) -> Garden:
    """A garden the caller may look at: a member, or a key admin of the tenant; else 404."""
    garden = _lookup(caller.tenant, ref)
    if garden is None or not (caller.has("admin") or _role_of(garden, caller.entity_uri) is not None):
        raise not_found("garden")
    return garden


def _managed_garden(caller: Caller, ref: str) -> Garden:
    """A garden the caller may manage (garden admin role or key admin), locked for this transaction.

    Non-members get 404, like strangers; members without the admin role get 403.
    """
    garden = _lookup(caller.tenant, ref, for_update=True)
    if garden is None:
        raise not_found("garden")
    if caller.has("admin"):
        return garden
    role = _role_of(garden, caller.entity_uri)
    if role is None:
        raise not_found("garden")
    if role != Garden.Role.ADMIN:
        raise forbidden(ADMIN_ROLE_REQUIRED)
    return garden


def create_garden_from_body(caller: Caller, body: Any) -> tuple[Garden, list[GardenMember]]:
    """Validate a ``POST /v1/gardens`` body and create the garden with the caller as its admin; 409 on a taken slug."""
    body = _object(body)
    errors: list = []
    raw_slug = body.get("slug")
    slug = normalize_slug(raw_slug) if isinstance(raw_slug, str) else None
    if slug is None:
        errors.append(
            field_error(["body", "slug"], f"slug must match ^{SLUG_PATTERN.pattern}$ (after lowercasing)", "slug")
        )
    name = body.get("name")
    name = name.strip() if isinstance(name, str) else None
    if not name or len(name) > MAX_NAME_LENGTH:
        errors.append(
            field_error(
                ["body", "name"], f"name must be a non-empty string of at most {MAX_NAME_LENGTH} characters", "string"
            )
        )
    scope = body.get("scope", DEFAULT_SCOPE)
    if scope not in SCOPES:
        errors.append(field_error(["body", "scope"], f"scope must be one of {', '.join(SCOPES)}", "literal_error"))
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH):
        errors.append(
            field_error(
                ["body", "description"],
                f"description must be a string of at most {MAX_DESCRIPTION_LENGTH} characters",
                "string_type",
            )
        )
    _text_errors("name", name, errors)
    _text_errors("description", description, errors)
    if errors:
        raise InputInvalid(errors)

    now = timezone.now()
    try:
        with transaction.atomic():
            garden = Garden.objects.create(
                tenant=caller.tenant,
                slug=slug,
                name=name,
                scope=scope,
                description=description or "",
                created_by=caller.entity_uri,
                created_at=now,
            )
            creator = GardenMember.objects.create(
                garden=garden,
                entity_uri=caller.entity_uri,
                role=Garden.Role.ADMIN,
                added_by=caller.entity_uri,
                added_at=now,
            )
            record_event(caller.tenant, caller.entity_uri, "garden_created", garden, {"name": name, "scope": scope})
    except IntegrityError:
        # The unique (tenant, slug) constraint decides, so concurrent creates get 409 too.
        raise ApiError(409, f"a garden with slug '{slug}' already exists") from None
    return garden, [creator]


def gardens_for(caller: Caller) -> QuerySet[Garden]:
    """The gardens listed to the caller, oldest first, members prefetched: its own, or all for key admins."""
    gardens = Garden.objects.filter(tenant=caller.tenant)
    if not caller.has("admin"):
        gardens = gardens.filter(members__entity_uri=caller.entity_uri)
    return gardens.order_by("created_at", "id").prefetch_related(
        Prefetch("members", queryset=GardenMember.objects.order_by("added_at", "id"), to_attr="ordered_members")
    )


def delete_garden(caller: Caller, ref: str) -> None:
    """Delete a garden and its memberships. Its facts stay, visible to nobody: no one is a member any more."""
    with transaction.atomic():
        garden = _managed_garden(caller, ref)
        record_event(
            caller.tenant, caller.entity_uri, "garden_deleted", garden, {"name": garden.name, "scope": garden.scope}
        )
        garden.delete()


# --- members -----------------------------------------------------------------------------------


def add_member_from_body(caller: Caller, ref: str, body: Any) -> GardenMember:
    """Validate a ``POST .../members`` body and add the member; 409 if it already is one."""
    entity_uri, role = _parse_member_body(body)
    try:
        with transaction.atomic():
            garden = _managed_garden(caller, ref)
            existing = _role_of(garden, entity_uri)
            if existing is not None:
                raise ApiError(409, f"{entity_uri} is already a member with role '{existing}'; use PATCH to change it")
            member = GardenMember.objects.create(
                garden=garden, entity_uri=entity_uri, role=role, added_by=caller.entity_uri, added_at=timezone.now()
            )
            record_event(
                caller.tenant,
                caller.entity_uri,
                "garden_member_added",
                garden,
                {"entity_uri": entity_uri, "role": role},
            )
    except IntegrityError:
        # Added concurrently between the check and the insert.
        raise ApiError(409, f"{entity_uri} is already a member") from None
    return member


def change_member_role(caller: Caller, ref: str, raw_entity_uri: str, body: Any) -> GardenMember:
    """Set a member's role (``PATCH .../members/{entity_uri}``); demoting the last admin is 403."""
    body = _object(body)
    errors: list = []
    role = _role(body, None, errors)
    if errors:
        raise InputInvalid(errors)
    entity_uri = _entity_uri(raw_entity_uri)
    with transaction.atomic():
        garden = _managed_garden(caller, ref)
        member = _member(garden, entity_uri)
        if member.role != role:
            if member.role == Garden.Role.ADMIN:
                _keep_an_admin(garden)
            previous = member.role
            member.role = role
            member.save(update_fields=["role"])
            record_event(
                caller.tenant,
                caller.entity_uri,
                "garden_member_changed",
                garden,
                {"entity_uri": entity_uri, "role": role, "previous_role": previous},
            )
    return member


def remove_member(caller: Caller, ref: str, raw_entity_uri: str) -> None:
    """Remove a member (``DELETE .../members/{entity_uri}``); removing the last admin is 403."""
    entity_uri = _entity_uri(raw_entity_uri)
    with transaction.atomic():
        garden = _managed_garden(caller, ref)
        member = _member(garden, entity_uri)
        if member.role == Garden.Role.ADMIN:
            _keep_an_admin(garden)
        member.delete()
        record_event(
            caller.tenant,
            caller.entity_uri,
            "garden_member_removed",
            garden,
            {"entity_uri": entity_uri, "role": member.role},
        )


def _member(garden: Garden, entity_uri: str) -> GardenMember:
    member = garden.members.filter(entity_uri=entity_uri).first()
    if member is None:
        raise not_found("member")
    return member


def _keep_an_admin(garden: Garden) -> None:
    """403 unless another admin remains. The garden row is locked, so concurrent demotions cannot both pass."""
    if garden.members.filter(role=Garden.Role.ADMIN).count() <= 1:
        raise forbidden(LAST_ADMIN)


def record_event(tenant: str, actor: str, event_type: str, garden: Garden, detail: dict[str, Any]) -> None:
    """The audit row of a garden or membership change (call inside the change's transaction)."""
    audit.record(
        tenant,
        event_type,
        actor=actor,
        target=garden_uri_for(garden.slug),
        detail={"garden": str(garden.id), "slug": garden.slug, **detail},
    )
