"""Memory garden endpoints (WIRE.md §4.2); the rules live in ``stigmem.gardens``."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem import gardens
from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.limits import MAX_URI_LENGTH

# Reads need `read`; every change needs `write` on top of the garden admin role (or the key `admin` permission).
_PERMISSIONS = {"GET": "read", "POST": "write", "PATCH": "write", "DELETE": "write"}


class GardenCreateSerializer(serializers.Serializer):
    slug = serializers.RegexField(r"^\s*[A-Za-z0-9][A-Za-z0-9-]{0,62}\s*$")
    name = serializers.CharField(max_length=gardens.MAX_NAME_LENGTH)
    scope = serializers.ChoiceField(choices=schemas.SCOPE_CHOICES, required=False)
    description = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=gardens.MAX_DESCRIPTION_LENGTH
    )


class GardenMemberSerializer(serializers.Serializer):
    entity_uri = serializers.CharField()
    role = serializers.ChoiceField(choices=gardens.ROLES)
    added_by = serializers.CharField()
    added_at = serializers.DateTimeField()


class GardenSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    garden_id = serializers.CharField()
    slug = serializers.CharField()
    name = serializers.CharField()
    scope = serializers.ChoiceField(choices=schemas.SCOPE_CHOICES)
    description = serializers.CharField(allow_null=True)
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    members = GardenMemberSerializer(many=True)
    quarantine = serializers.BooleanField()


class GardenMemberCreateSerializer(serializers.Serializer):
    entity_uri = serializers.CharField(max_length=MAX_URI_LENGTH)
    role = serializers.ChoiceField(choices=gardens.ROLES, required=False)


# A raw schema: drf-spectacular would document a serializer under PATCH as partial, but `role` is required.
MEMBER_UPDATE_SCHEMA = {
    "application/json": {
        "type": "object",
        "properties": {"role": {"type": "string", "enum": list(gardens.ROLES)}},
        "required": ["role"],
    }
}


GARDEN_PARAMETER = OpenApiParameter("garden", str, OpenApiParameter.PATH, description="the garden's slug or id")
MEMBER_PARAMETERS = [
    GARDEN_PARAMETER,
    OpenApiParameter(
        "member_uri", str, OpenApiParameter.PATH, description="the member's entity URI, URL-encoded or raw"
    ),
]


class GardensView(NodeView):
    permission_by_method = _PERMISSIONS

    @extend_schema(
        operation_id="create_garden",
        description="Create a garden; the caller becomes its admin member. Slugs are stripped and lowercased.",
        request=GardenCreateSerializer,
        responses={201: GardenSerializer, **schemas.errors(403, 409, 422)},
    )
    def post(self, request: Request) -> Response:
        garden, members = gardens.create_garden_from_body(self.caller, request.data)
        return Response(gardens.garden_record(garden, members), status=201)

    @extend_schema(
        operation_id="list_gardens",
        description="The gardens the caller is a member of (all of the tenant's for admin keys), as a bare array.",
        responses={200: GardenSerializer(many=True), **schemas.errors(403)},
    )
    def get(self, request: Request) -> Response:
        # A bare array, like the reference.
        return Response(
            [gardens.garden_record(garden, garden.ordered_members) for garden in gardens.gardens_for(self.caller)]
        )


class GardenDetailView(NodeView):
    permission_by_method = _PERMISSIONS

    @extend_schema(
        operation_id="get_garden",
        parameters=[GARDEN_PARAMETER],
        description="A garden by slug or id, with its members. Members and admin keys only; others get 404.",
        responses={200: GardenSerializer, **schemas.errors(403, 404)},
    )
    def get(self, request: Request, garden: str) -> Response:
        found = gardens.visible_garden(self.caller, garden)
        return Response(gardens.garden_record(found, gardens.members_of(found)))

    @extend_schema(
        operation_id="delete_garden",
        parameters=[GARDEN_PARAMETER],
        description="Delete a garden (garden admin role or admin key). Its facts stay, visible to nobody.",
        responses={204: None, **schemas.errors(403, 404)},
    )
    def delete(self, request: Request, garden: str) -> Response:
        gardens.delete_garden(self.caller, garden)
        return Response(status=204)


class GardenMembersView(NodeView):
    permission_by_method = _PERMISSIONS

    @extend_schema(
        operation_id="list_garden_members",
        parameters=[GARDEN_PARAMETER],
        description="The garden's members, oldest first. Members and admin keys only; others get 404.",
        responses={200: GardenMemberSerializer(many=True), **schemas.errors(403, 404)},
    )
    def get(self, request: Request, garden: str) -> Response:
        found = gardens.visible_garden(self.caller, garden)
        return Response([gardens.member_record(member) for member in gardens.members_of(found)])

    @extend_schema(
        operation_id="add_garden_member",
        parameters=[GARDEN_PARAMETER],
        description="Add a member (garden admin role or admin key); the entity URI is normalized.",
        request=GardenMemberCreateSerializer,
        responses={201: GardenMemberSerializer, **schemas.errors(400, 403, 404, 409, 422)},
    )
    def post(self, request: Request, garden: str) -> Response:
        member = gardens.add_member_from_body(self.caller, garden, request.data)
        return Response(gardens.member_record(member), status=201)


class GardenMemberView(NodeView):
    """One member, named by its entity URI: URL-encoded (``stigmem%3A%2F%2F...``) or raw, slashes and all."""

    permission_by_method = _PERMISSIONS

    @extend_schema(
        operation_id="change_garden_member_role",
        parameters=MEMBER_PARAMETERS,
        description="Change a member's role (path entity URI may be URL-encoded); demoting the last admin is 403.",
        request=MEMBER_UPDATE_SCHEMA,
        responses={200: GardenMemberSerializer, **schemas.errors(400, 403, 404, 422)},
    )
    def patch(self, request: Request, garden: str, member_uri: str) -> Response:
        member = gardens.change_member_role(self.caller, garden, member_uri, request.data)
        return Response(gardens.member_record(member))

    @extend_schema(
        operation_id="remove_garden_member",
        parameters=MEMBER_PARAMETERS,
        description="Remove a member. The entity URI in the path may be URL-encoded. Removing the last admin is 403.",
        responses={204: None, **schemas.errors(400, 403, 404)},
    )
    def delete(self, request: Request, garden: str, member_uri: str) -> Response:
        gardens.remove_member(self.caller, garden, member_uri)
        return Response(status=204)
