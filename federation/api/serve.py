"""The endpoints peers call (WIRE.md §6.4, §6.6, §6.7), authenticated by peer token, not API key."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from federation import serve, tokens
from federation.api.common import require_enabled
from stigmem.api import schemas
from stigmem.api.tombstones import TombstoneRevocationSerializer, TombstoneSerializer
from stigmem.errors import ApiError

PEER_TOKEN = (
    "Called by peer nodes with `Authorization: Bearer <peer token>` (an EdDSA JWT, one per request; "
    "WIRE.md §6.3), not with an API key."
)


class FederationFactPageSerializer(serializers.Serializer):
    facts = schemas.FactRecordSerializer(many=True)
    cursor = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class FederationTombstonePageSerializer(serializers.Serializer):
    tombstones = TombstoneSerializer(many=True)
    revocations = TombstoneRevocationSerializer(many=True)
    cursor = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    described = {
        401: "peer token missing or refused; `detail` is the reason code",
        403: "`no permitted scopes`, or `scope not permitted for this peer`",
        404: "federation is not enabled on this node",
        405: "push replication is not enabled on this node",
    }
    documented = {
        status: OpenApiResponse(schemas.ErrorSerializer, description=described[status])
        for status in statuses
        if status != 422
    }
    if 422 in statuses:
        documented[422] = OpenApiResponse(schemas.ValidationErrorSerializer, description="validation failed")
    return documented


CURSOR = OpenApiParameter("cursor", str, description="opaque: the `cursor` of the previous page")


class PeerView(APIView):
    """Peers are machines holding a one-time token: no API-key authentication, and no per-key
    throttle (every unauthenticated caller would share one bucket, and an approved peer paces
    itself by its pull interval and budget; the operator suspends a peer that misbehaves)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        # Before method dispatch, so every method answers 404 while federation is off.
        require_enabled(request)


class FactsView(PeerView):
    @extend_schema(
        operation_id="federation_facts",
        description=f"Facts that originated on this node, in `seq` order, for replication. {PEER_TOKEN}",
        parameters=[
            CURSOR,
            OpenApiParameter(
                "limit", {"type": "integer", "minimum": 1, "maximum": serve.LIMIT_MAX}, description="default 100"
            ),
            OpenApiParameter("scope", str, description="only this scope (one of the permitted scopes)"),
        ],
        responses={200: FederationFactPageSerializer, **_errors(401, 403, 404, 422)},
    )
    def get(self, request: Request) -> Response:
        call = tokens.authenticate(request)
        query = serve.parse_facts_query(request.query_params)
        return Response(serve.facts_page(call, query))


class TombstonesView(PeerView):
    @extend_schema(
        operation_id="federation_tombstones",
        description="This node's own tombstones and their revocations, for replication, one cursor over both "
        f"(each page holds at most `limit` of them together). {PEER_TOKEN}",
        parameters=[
            CURSOR,
            OpenApiParameter(
                "limit", {"type": "integer", "minimum": 1, "maximum": serve.LIMIT_MAX}, description="default 200"
            ),
        ],
        responses={200: FederationTombstonePageSerializer, **_errors(401, 403, 404, 422)},
    )
    def get(self, request: Request) -> Response:
        call = tokens.authenticate(request)
        query = serve.parse_tombstones_query(request.query_params)
        return Response(serve.tombstones_page(call, query))


class PushView(PeerView):
    @extend_schema(
        operation_id="federation_push",
        description="Push replication is not offered: peers pull. Always 405 (404 while federation is off).",
        request=None,
        responses=_errors(404, 405),
    )
    def post(self, request: Request) -> Response:
        raise ApiError(405, serve.PUSH_DISABLED)
