"""Tombstone endpoints (WIRE.md §4.3), all for admins of the caller's tenant."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.limits import MAX_URI_LENGTH
from stigmem.models import TOMBSTONE_SCOPES
from stigmem.tombstones import (
    MAX_REASON_LENGTH,
    create_tombstone,
    parse_create_body,
    parse_revoke_body,
    revocation_record,
    revoke_tombstone,
    tombstone_record,
    tombstone_status,
)


class TombstoneCreateSerializer(serializers.Serializer):
    entity_uri = serializers.CharField(max_length=MAX_URI_LENGTH)
    scope = serializers.ChoiceField(choices=list(TOMBSTONE_SCOPES), required=False, default="*")
    reason = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=MAX_REASON_LENGTH)
    legal_hold = serializers.BooleanField(required=False, default=False)


class TombstoneSerializer(serializers.Serializer):
    id = serializers.CharField()
    entity_uri = serializers.CharField()
    scope = serializers.ChoiceField(choices=list(TOMBSTONE_SCOPES))
    reason = serializers.CharField(allow_null=True)
    signed_by = serializers.CharField()
    key_id = serializers.CharField()
    signature = serializers.CharField()
    created_at = serializers.DateTimeField()
    legal_hold = serializers.BooleanField()


class TombstoneRevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)


class TombstoneRevocationSerializer(serializers.Serializer):
    id = serializers.CharField()
    tombstone_id = serializers.CharField()
    reason = serializers.CharField()
    revoked_by = serializers.CharField()
    signed_by = serializers.CharField()
    key_id = serializers.CharField()
    signature = serializers.CharField()
    revoked_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField(help_text="the same as revoked_at (the reference's name)")


class TombstoneStatusSerializer(serializers.Serializer):
    tombstoned = serializers.BooleanField()
    tombstones = TombstoneSerializer(many=True)
    revocations = TombstoneRevocationSerializer(many=True)


class TombstonesView(NodeView):
    permission_by_method = {"POST": "admin"}

    @extend_schema(
        operation_id="create_tombstone",
        description="Tombstone an entity in one scope (or `*`, every scope), signed with the node key. "
        "Creating the same active tombstone again returns the existing one, also with 201.",
        request=TombstoneCreateSerializer,
        responses={201: TombstoneSerializer, **schemas.errors(400, 403, 422)},
    )
    def post(self, request: Request) -> Response:
        data = parse_create_body(request.data)
        tombstone, _ = create_tombstone(
            tenant=self.caller.tenant,
            entity_uri=data.entity_uri,
            scope=data.scope,
            reason=data.reason,
            legal_hold=data.legal_hold,
            actor=self.caller.entity_uri,
        )
        # 201 for a repeat too, like the reference (and like re-asserting a stored fact).
        return Response(tombstone_record(tombstone), status=201)


ENTITY_PARAMETER = OpenApiParameter(
    "entity_uri", str, OpenApiParameter.PATH, description="the entity URI, URL-encoded (it may contain '/')"
)


class TombstoneStatusView(NodeView):
    permission_by_method = {"GET": "admin"}

    @extend_schema(
        operation_id="tombstone_status",
        description="Every tombstone of the entity in the caller's tenant, with the revocations; "
        "`tombstoned` is true while one of them is active.",
        parameters=[ENTITY_PARAMETER],
        responses={200: TombstoneStatusSerializer, **schemas.errors(403)},
    )
    def get(self, request: Request, entity_uri: str) -> Response:
        return Response(tombstone_status(self.caller.tenant, entity_uri))


class RevokeTombstoneView(NodeView):
    permission_by_method = {"GET": "admin", "POST": "admin"}

    @extend_schema(
        operation_id="revoke_tombstone",
        description="Lift a tombstone: the signed revocation record. 409 when it is already revoked.",
        request=TombstoneRevokeSerializer,
        responses={200: TombstoneRevocationSerializer, **schemas.errors(403, 404, 409, 422)},
    )
    def post(self, request: Request, tombstone_id: str) -> Response:
        reason = parse_revoke_body(request.data)
        revocation = revoke_tombstone(
            tenant=self.caller.tenant, tombstone_id=tombstone_id, reason=reason, actor=self.caller.entity_uri
        )
        return Response(revocation_record(revocation))

    @extend_schema(exclude=True)
    def get(self, request: Request, tombstone_id: str) -> Response:
        # `GET /v1/tombstones/<x>/revoke` is the status of the entity URI "<x>/revoke": this route
        # is matched first, so it answers for the status route.
        return Response(tombstone_status(self.caller.tenant, f"{tombstone_id}/revoke"))
