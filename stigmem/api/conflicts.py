"""Conflict endpoints (WIRE.md §2.7)."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.conflicts import list_conflicts, resolve_conflict
from stigmem.errors import InputInvalid, field_error
from stigmem.limits import QUERY_LIMIT_MAX
from stigmem.models import Conflict
from stigmem.queries import parse_limit, visible_facts
from stigmem.records import fact_record, garden_uris_of
from stigmem.values import text_problem


class ConflictsView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(
        operation_id="list_conflicts",
        parameters=[
            OpenApiParameter("status", str, enum=["unresolved", "resolved"]),
            OpenApiParameter("cursor", str),
            OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": QUERY_LIMIT_MAX}),
        ],
        responses={200: schemas.ConflictPageSerializer, **schemas.errors(400, 422)},
    )
    def get(self, request: Request) -> Response:
        errors: list = []
        status = request.query_params.get("status") or Conflict.Status.UNRESOLVED
        if status not in Conflict.Status.values:
            errors.append(field_error(["query", "status"], "status must be unresolved or resolved", "literal_error"))
        limit = parse_limit(request.query_params, errors)
        if errors:
            raise InputInvalid(errors)
        page = list_conflicts(self.caller, status, request.query_params.get("cursor"), limit)
        fact_ids = {c.fact_a_id for c in page.conflicts} | {c.fact_b_id for c in page.conflicts}
        visible = {f.id: f for f in visible_facts(self.caller).filter(id__in=fact_ids)}
        now = timezone.now()
        uris = garden_uris_of(visible.values())

        def record(fact_id):
            fact = visible.get(fact_id)
            return fact_record(fact, now=now, garden_uris=uris) if fact is not None else None

        conflicts = [
            {
                "conflict_id": c.public_id,
                "fact_a": record(c.fact_a_id),
                "fact_b": record(c.fact_b_id),
                "status": c.status,
                "resolved_by": c.resolved_by,
                "detected_at": c.detected_at.isoformat(),
            }
            for c in page.conflicts
        ]
        return Response({"conflicts": conflicts, "cursor": page.cursor, "has_more": page.has_more})


class ResolveConflictView(NodeView):
    permission_by_method = {"POST": "write"}

    @extend_schema(
        operation_id="resolve_conflict",
        request=schemas.ResolveSerializer,
        responses={200: schemas.ResolvedSerializer, **schemas.errors(403, 404, 409, 413, 422)},
    )
    def post(self, request: Request, conflict_id: str) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
        note = body.get("resolution_note") or ""
        if not isinstance(note, str):
            raise InputInvalid([field_error(["body", "resolution_note"], "must be a string", "string_type")])
        if (problem := text_problem(note)) is not None:
            raise InputInvalid([field_error(["body", "resolution_note"], problem, "string_unicode")])
        winner = resolve_conflict(
            self.caller,
            conflict_id,
            winning_fact_id=body.get("winning_fact_id"),
            new_value=body.get("new_value"),
            note=note[:2000],
        )
        return Response({"resolution_fact_id": str(winner.id), "conflict_status": "resolved"})
