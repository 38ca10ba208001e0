"""Fact endpoints: assert, batch, query, get, verify-cid (WIRE.md §2.7)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem import metrics
from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.errors import ApiError, InputInvalid, field_error
from stigmem.fact_input import FactInput, input_from_fact, parse_fact_body
from stigmem.facts import assert_facts, authorize
from stigmem.limits import MAX_BATCH_FACTS
from stigmem.queries import get_fact, parse_fact_query, run_fact_query
from stigmem.records import fact_record, garden_uris_of


class FactsView(NodeView):
    permission_by_method = {"GET": "read", "POST": "write"}

    @extend_schema(
        operation_id="assert_fact",
        request=schemas.AssertSerializer,
        responses={201: schemas.FactRecordSerializer, **schemas.errors(400, 403, 404, 413, 422)},
    )
    def post(self, request: Request) -> Response:
        item = parse_fact_body(request.data)
        authorize(self.caller, item)
        outcome = assert_facts(self.caller.tenant, [item], actor=self.caller.entity_uri)[0]
        return Response(fact_record(outcome.fact, warnings=outcome.warnings), status=201)

    @extend_schema(
        operation_id="query_facts",
        parameters=schemas.FACT_QUERY_PARAMETERS,
        responses={200: schemas.FactPageSerializer, **schemas.errors(400, 404, 422)},
    )
    def get(self, request: Request) -> Response:
        page = run_fact_query(self.caller, parse_fact_query(request.query_params))
        now = timezone.now()
        uris = garden_uris_of(page.facts)
        records = [fact_record(fact, now=now, garden_uris=uris) for fact in page.facts]
        metrics.FACTS_READ.inc(len(records))
        body = {
            "facts": records,
            # Like the reference: no count when tombstones removed results (no existence oracle).
            "total": None if page.tombstoned else len(records),
            "cursor": page.cursor,
            "tombstone_notices": page.tombstone_notices,
        }
        headers = {} if page.tombstoned else {"X-Total-Count": str(len(records))}
        return Response(body, headers=headers)


class FactBatchView(NodeView):
    permission_by_method = {"POST": "write"}

    @extend_schema(
        operation_id="assert_facts_batch",
        request=schemas.BatchSerializer,
        responses={200: schemas.BatchResponseSerializer, **schemas.errors(413, 422)},
    )
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
        raw_facts = body.get("facts")
        if not isinstance(raw_facts, list) or not 1 <= len(raw_facts) <= MAX_BATCH_FACTS:
            raise InputInvalid(
                [field_error(["body", "facts"], f"facts must be a list of 1 to {MAX_BATCH_FACTS} items", "list_length")]
            )
        atomic = body.get("atomic", False)
        if not isinstance(atomic, bool):
            raise InputInvalid([field_error(["body", "atomic"], "atomic must be a boolean", "bool_type")])

        accepted: list[tuple[int, FactInput]] = []
        rejected: dict[int, ApiError] = {}
        for index, raw in enumerate(raw_facts):
            try:
                item = parse_fact_body(raw, ("body", "facts", index))
                authorize(self.caller, item, loc=("body", "facts", index))
            except ApiError as exc:
                rejected[index] = exc
            else:
                accepted.append((index, item))
        if atomic and rejected:
            raise InputInvalid([entry for index, exc in rejected.items() for entry in _as_entries(index, exc)])

        outcomes = assert_facts(self.caller.tenant, [item for _, item in accepted], actor=self.caller.entity_uri)
        results: list[dict[str, Any] | None] = [None] * len(raw_facts)
        now = timezone.now()
        uris = garden_uris_of(outcome.fact for outcome in outcomes)
        for (index, _), outcome in zip(accepted, outcomes, strict=True):
            record = fact_record(outcome.fact, warnings=outcome.warnings, now=now, garden_uris=uris)
            results[index] = {"index": index, "status": 201, "fact": record, "error": None}
        for index, exc in rejected.items():
            results[index] = {"index": index, "status": exc.status, "fact": None, "error": exc.body()}
        return Response({"accepted": len(accepted), "rejected": len(rejected), "results": results})


def _as_entries(index: int, exc: ApiError) -> list[dict[str, Any]]:
    """One rejected batch item as 422 entries (a non-422 rejection keeps its message)."""
    if isinstance(exc, InputInvalid):
        return exc.detail
    detail = exc.detail
    message = detail.get("message") if isinstance(detail, dict) else str(detail)
    code = detail.get("code") if isinstance(detail, dict) else f"rejected_{exc.status}"
    return [field_error(["body", "facts", index], message, code)]


class FactDetailView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(
        operation_id="get_fact",
        responses={200: schemas.FactRecordSerializer, **schemas.errors(400, 404)},
    )
    def get(self, request: Request, ref: str) -> Response:
        fact = get_fact(self.caller, ref)
        metrics.FACTS_READ.inc()
        return Response(fact_record(fact))


class VerifyCidView(NodeView):
    permission_by_method = {"POST": "read"}

    @extend_schema(
        operation_id="verify_fact_cid",
        request=None,
        responses={200: schemas.VerifyCidSerializer, **schemas.errors(400, 404)},
    )
    def post(self, request: Request, ref: str) -> Response:
        fact = get_fact(self.caller, ref)
        # The CID of exactly what is stored (the same recomputation a re-assert makes).
        computed = input_from_fact(fact).cid
        valid = computed == fact.cid
        return Response(
            {
                "cid_valid": valid,
                "computed_cid": computed,
                "stored_cid": fact.cid or None,
                "mismatch_reason": None if valid else "stored CID does not match the fact's content",
            }
        )
