"""The audit log endpoint (WIRE.md §4.4)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.audit import entry_record, list_audit, parse_audit_query


class AuditView(NodeView):
    permission_by_method = {"GET": "audit.read"}

    @extend_schema(
        operation_id="list_audit_entries",
        parameters=schemas.AUDIT_QUERY_PARAMETERS,
        responses={200: schemas.AuditPageSerializer, **schemas.errors(400, 403, 422)},
    )
    def get(self, request: Request) -> Response:
        page = list_audit(self.caller.tenant, parse_audit_query(request.query_params))
        entries = [entry_record(event) for event in page.events]
        return Response({"entries": entries, "cursor": page.cursor, "next_cursor": page.cursor, "total": len(entries)})
