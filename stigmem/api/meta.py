"""Discovery and operations endpoints (WIRE.md §3)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from stigmem import metrics, signing
from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.models import NodeIdentity
from stigmem.node import node_id

FEDERATION_VERSION = "0.5"
NAMESPACES = ["stigmem:", "rel:", "memory:", "intent:", "roadmap:", "preference:", "garden:", "ttp:"]


class WellKnownView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(operation_id="well_known", responses={200: schemas.WellKnownSerializer})
    def get(self, request: Request) -> Response:
        document = {
            "version": "1.0",
            "node_id": node_id(),
            "node_url": settings.STIGMEM_NODE_URL,
            "auth": "required" if settings.STIGMEM_AUTH_REQUIRED else "none",
            "federation": "enabled" if settings.STIGMEM_FEDERATION_ENABLED else "disabled",
            "source_attestation": "off",
            "namespaces": NAMESPACES,
            "spec": settings.STIGMEM_SPEC_URL,
            "cors": {"dev_localhost": False, "configured": False},
        }
        if settings.STIGMEM_FEDERATION_ENABLED:
            document["federation_pubkey"] = signing.public_key_b64()
            document["federation_version"] = FEDERATION_VERSION
            document["federation_endpoints"] = {
                "peers": "/v1/federation/peers",
                "facts": "/v1/federation/facts",
                "push": None,
            }
        return Response(document)


class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        operation_id="healthz",
        responses={200: schemas.HealthSerializer, 503: schemas.HealthSerializer},
    )
    def get(self, request: Request) -> Response:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            beat = NodeIdentity.objects.filter(pk=1).values_list("worker_heartbeat_at", flat=True).first()
        except Exception:  # any database failure is what this endpoint exists to report
            return Response({"status": "degraded", "db": "error", "worker_heartbeat_age_s": None}, status=503)
        age = round((timezone.now() - beat).total_seconds(), 1) if beat else None
        return Response({"status": "ok", "db": "ok", "worker_heartbeat_age_s": age})


class MeView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(operation_id="me", responses={200: schemas.MeSerializer, **schemas.errors()})
    def get(self, request: Request) -> Response:
        return Response(
            {
                "entity_uri": self.caller.entity_uri,
                "permissions": sorted(self.caller.permissions),
                "tenant_id": self.caller.tenant,
            }
        )


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.STIGMEM_METRICS_TOKEN
    if token:
        scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
        supplied = supplied.strip() if scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            response = JsonResponse({"detail": "metrics token required"}, status=401)
            response["WWW-Authenticate"] = "Bearer"
            return response
    body, content_type = metrics.render()
    return HttpResponse(body, content_type=content_type)
