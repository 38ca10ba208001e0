"""Decay endpoints (WIRE.md §7); the rules live in ``decay.service`` and ``stigmem.jobs``.

Sweeping and changing policies need ``admin`` and only ever touch the caller's tenant; reading
a job or the policies needs ``read``. Another tenant's job or policy is 404, as if it did not exist.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from decay import service
from stigmem import jobs
from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.limits import MAX_RELATION_LENGTH
from stigmem.models import Job

SWEEP_PARAMETERS = [
    OpenApiParameter(
        "ttl_seconds",
        {"type": "integer", "minimum": 0, "maximum": service.MAX_SECONDS},
        description="expire facts without valid_until older than this (0: every such fact)",
    ),
    OpenApiParameter(
        "min_confidence",
        {"type": "number", "minimum": 0, "maximum": 1},
        description="expire current facts whose effective confidence is above 0 and below this",
    ),
    OpenApiParameter("scope", str, enum=schemas.SCOPE_CHOICES, description="only facts of this scope"),
    OpenApiParameter("dry_run", bool, description="count the candidates, change nothing (always synchronous)"),
]


class SweepResultSerializer(serializers.Serializer):
    scanned = serializers.IntegerField(help_text="candidates found")
    decayed = serializers.IntegerField(help_text="facts expired by this sweep (0 on a dry run)")
    dry_run = serializers.BooleanField()


class SweepQueuedSerializer(serializers.Serializer):
    job_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=[Job.Status.PENDING])
    estimated_s = serializers.IntegerField()


class JobSerializer(serializers.Serializer):
    job_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Job.Status.values)
    scope = serializers.ChoiceField(choices=schemas.SCOPE_CHOICES, allow_null=True)
    estimated_s = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    progress = serializers.FloatField(min_value=0.0, max_value=1.0)
    scanned = serializers.IntegerField()
    decayed = serializers.IntegerField()
    dry_run = serializers.BooleanField()
    error = serializers.CharField(allow_null=True)


class PolicyInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=service.MAX_NAME_LENGTH)
    relation_prefix = serializers.CharField(
        max_length=MAX_RELATION_LENGTH, required=False, allow_blank=True, allow_null=True, help_text='"" matches all'
    )
    scope = serializers.ChoiceField(
        choices=schemas.SCOPE_CHOICES, required=False, allow_null=True, allow_blank=True, help_text="null: any scope"
    )
    ttl_seconds = serializers.IntegerField(min_value=0, max_value=service.MAX_SECONDS, required=False, allow_null=True)
    half_life_seconds = serializers.IntegerField(
        min_value=1, max_value=service.MAX_SECONDS, required=False, allow_null=True
    )
    min_confidence = serializers.FloatField(min_value=0.0, max_value=1.0, required=False, allow_null=True)
    enabled = serializers.BooleanField(required=False)


class PolicyPatchSerializer(PolicyInputSerializer):
    name = serializers.CharField(max_length=service.MAX_NAME_LENGTH, required=False)


class PolicySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    relation_prefix = serializers.CharField(allow_blank=True)
    scope = serializers.ChoiceField(choices=schemas.SCOPE_CHOICES, allow_null=True)
    ttl_seconds = serializers.IntegerField(allow_null=True)
    half_life_seconds = serializers.IntegerField(allow_null=True)
    min_confidence = serializers.FloatField(allow_null=True)
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class PolicyListSerializer(serializers.Serializer):
    policies = PolicySerializer(many=True, help_text="most specific first (the order in which they apply)")


JOB_PARAMETER = OpenApiParameter("job_id", str, OpenApiParameter.PATH)
POLICY_PARAMETER = OpenApiParameter("policy_id", str, OpenApiParameter.PATH)


class SweepView(NodeView):
    permission_by_method = {"POST": "admin"}

    @extend_schema(
        operation_id="decay_sweep",
        description=(
            "Expire the caller's tenant's facts by TTL and/or confidence floor (without either: by the "
            "tenant's enabled policies). Query-string parameters; the body is ignored. Above "
            "STIGMEM_ASYNC_JOB_THRESHOLD facts in scope a real sweep is queued (202) and polled at "
            "/v1/decay/jobs/{job_id}."
        ),
        parameters=SWEEP_PARAMETERS,
        request=None,
        responses={
            200: SweepResultSerializer,
            202: OpenApiResponse(SweepQueuedSerializer, description="queued; poll the job"),
            **schemas.errors(400, 403, 409, 422),
        },
    )
    def post(self, request: Request) -> Response:
        sweep = service.parse_sweep_query(self.caller.tenant, request.query_params)
        outcome = service.start_sweep(self.caller, sweep)
        if outcome.job is not None:
            job = outcome.job
            return Response(
                {"job_id": str(job.id), "status": Job.Status.PENDING, "estimated_s": job.estimated_s}, status=202
            )
        result = outcome.result
        return Response({"scanned": result.scanned, "decayed": result.decayed, "dry_run": result.dry_run})


class JobView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(
        operation_id="decay_job",
        parameters=[JOB_PARAMETER],
        responses={200: JobSerializer, **schemas.errors(403, 404)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        return Response(jobs.job_record(jobs.get_job(self.caller.tenant, job_id)))


class PoliciesView(NodeView):
    permission_by_method = {"GET": "read", "POST": "admin"}

    @extend_schema(operation_id="decay_policies_list", responses={200: PolicyListSerializer, **schemas.errors(403)})
    def get(self, request: Request) -> Response:
        return Response({"policies": [service.policy_record(p) for p in service.list_policies(self.caller.tenant)]})

    @extend_schema(
        operation_id="decay_policies_create",
        request=PolicyInputSerializer,
        responses={201: PolicySerializer, **schemas.errors(403, 409, 422)},
    )
    def post(self, request: Request) -> Response:
        policy = service.create_policy(self.caller, request.data)
        return Response(service.policy_record(policy), status=201)


class PolicyView(NodeView):
    permission_by_method = {"GET": "read", "PATCH": "admin", "DELETE": "admin"}

    @extend_schema(
        operation_id="decay_policy_get",
        parameters=[POLICY_PARAMETER],
        responses={200: PolicySerializer, **schemas.errors(403, 404)},
    )
    def get(self, request: Request, policy_id: str) -> Response:
        return Response(service.policy_record(service.get_policy(self.caller.tenant, policy_id)))

    @extend_schema(
        operation_id="decay_policy_update",
        parameters=[POLICY_PARAMETER],
        request=PolicyPatchSerializer,
        responses={200: PolicySerializer, **schemas.errors(403, 404, 409, 422)},
    )
    def patch(self, request: Request, policy_id: str) -> Response:
        policy = service.update_policy(self.caller, policy_id, request.data)
        return Response(service.policy_record(policy))

    @extend_schema(
        operation_id="decay_policy_delete",
        parameters=[POLICY_PARAMETER],
        responses={204: None, **schemas.errors(403, 404)},
    )
    def delete(self, request: Request, policy_id: str) -> Response:
        service.delete_policy(self.caller, policy_id)
        return Response(status=204)
