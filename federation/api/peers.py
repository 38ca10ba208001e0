"""Peer registration and management endpoints (WIRE.md §6.2), authenticated by API key."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from federation import handshake
from federation.api.common import require_enabled
from federation.models import Peer
from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.errors import not_found

PEER_STATUSES = [status.value for status in Peer.Status]


class FederationDeclarationSerializer(serializers.Serializer):
    node_id = serializers.RegexField(r"^stigmem:node:\S+$", max_length=handshake.MAX_NODE_ID_LENGTH)
    node_url = serializers.URLField(max_length=handshake.MAX_NODE_URL_LENGTH)
    federation_pubkey = serializers.CharField(help_text="base64url of the raw 32-byte Ed25519 public key")
    allowed_scopes = serializers.ListField(child=serializers.ChoiceField(choices=schemas.SCOPE_CHOICES), min_length=1)
    signed_at = serializers.RegexField(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", help_text="UTC, at most 24 hours old")
    declaration_sig = serializers.CharField(
        max_length=handshake.MAX_SIGNATURE_LENGTH,
        help_text="Ed25519 over the sorted compact JSON of the other five fields, base64url",
    )


class PeerRegisteredSerializer(serializers.Serializer):
    peer_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=[Peer.Status.PENDING_APPROVAL.value, Peer.Status.REJECTED.value])
    verified_at = serializers.CharField(allow_null=True)


class PeerRecordSerializer(serializers.Serializer):
    peer_id = serializers.UUIDField()
    node_id = serializers.CharField()
    node_url = serializers.CharField()
    status = serializers.ChoiceField(choices=PEER_STATUSES)
    allowed_scopes = serializers.ListField(child=serializers.CharField())
    established_at = serializers.DateTimeField(allow_null=True)
    pubkey_fingerprint = serializers.CharField()
    origin = serializers.ChoiceField(choices=[origin.value for origin in Peer.Origin])


class PeerListSerializer(serializers.Serializer):
    peers = PeerRecordSerializer(many=True)


class PeerActionSerializer(serializers.Serializer):
    pubkey_fingerprint = serializers.CharField(
        required=False, help_text="approve only (required there): 'sha256:' + hex sha256 of the peer's key string"
    )


class PeerActionResultSerializer(PeerRecordSerializer):
    approved_at = serializers.DateTimeField(required=False, help_text="approve only")


class FederationView(NodeView):
    """An API-key endpoint of the federation app (404 while federation is off)."""

    def initial(self, request: Request, *args, **kwargs) -> None:
        # Before authentication and permissions: while federation is off these endpoints do not exist.
        require_enabled(request)
        super().initial(request, *args, **kwargs)


class PeersView(FederationView):
    """Peers of the caller's tenant: list them, or register a node by its signed declaration."""

    permission_by_method = {"GET": "federate", "POST": "federate"}

    @extend_schema(
        operation_id="federation_list_peers",
        responses={200: PeerListSerializer, **schemas.errors(403, 404)},
    )
    def get(self, request: Request) -> Response:
        return Response({"peers": [handshake.peer_record(peer) for peer in handshake.list_peers(self.caller.tenant)]})

    @extend_schema(
        operation_id="federation_register_peer",
        request=FederationDeclarationSerializer,
        responses={201: PeerRegisteredSerializer, **schemas.errors(400, 403, 404, 409, 422)},
    )
    def post(self, request: Request) -> Response:
        peer = handshake.register(self.caller, request.data)
        return Response({"peer_id": peer.peer_id, "status": peer.status, "verified_at": None}, status=201)


class PeerActionView(FederationView):
    """Approve a pending peer by its key fingerprint, or suspend, resume or revoke a peer."""

    permission_by_method = {"POST": "admin:federation"}

    @extend_schema(
        operation_id="federation_peer_action",
        parameters=[OpenApiParameter("action", str, OpenApiParameter.PATH, enum=list(handshake.ACTIONS))],
        request=PeerActionSerializer,
        responses={200: PeerActionResultSerializer, **schemas.errors(400, 403, 404, 409, 422)},
    )
    def post(self, request: Request, peer_id: str, action: str) -> Response:
        actor = self.caller.entity_uri
        if action == "approve":
            supplied = handshake.parse_fingerprint_body(request.data)
            peer = handshake.approve(self.caller.tenant, peer_id, supplied, actor)
            return Response({**handshake.peer_record(peer), "approved_at": peer.established_at.isoformat()})
        if action not in handshake.ACTIONS:
            raise not_found("peer action")
        return Response(handshake.peer_record(handshake.change_status(self.caller.tenant, peer_id, action, actor)))
