"""API key endpoints (WIRE.md §4.1)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.keys import create_key_from_body, key_record, own_active_keys, revoke_key


class KeysView(NodeView):
    permission_by_method = {"GET": "read", "POST": "admin"}

    @extend_schema(
        operation_id="create_api_key",
        request=schemas.KeyCreateSerializer,
        responses={201: schemas.KeySerializer, **schemas.errors(400, 403, 409, 422)},
    )
    def post(self, request: Request) -> Response:
        issued = create_key_from_body(self.caller, request.data)
        return Response(key_record(issued.key, issued.raw_key if issued.generated else None), status=201)

    @extend_schema(operation_id="list_api_keys", responses={200: schemas.KeySerializer(many=True), **schemas.errors()})
    def get(self, request: Request) -> Response:
        # A bare array, like the reference: the caller identity's active keys.
        return Response([key_record(key) for key in own_active_keys(self.caller)[:1000]])


class KeyDetailView(NodeView):
    permission_by_method = {"DELETE": "read"}

    @extend_schema(operation_id="revoke_api_key", responses={204: None, **schemas.errors(404)})
    def delete(self, request: Request, key_id: str) -> Response:
        revoke_key(self.caller, key_id)
        return Response(status=204)
