"""The rules behind the decay endpoints (WIRE.md §7): sweep parameters, sweeps and jobs, policy CRUD.

The views in ``decay.api`` only translate HTTP; the management command validates its options
with the same functions, so a value the API refuses is refused by ``manage.py decay_sweep`` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from decay import policies
from decay.models import DecayPolicy
from decay.sweep import SweepBusy, SweepRequest, SweepResult, facts_in_scope, run_sweep
from stigmem import audit, jobs
from stigmem.auth import Caller
from stigmem.errors import ApiError, InputInvalid, coded, field_error, not_found
from stigmem.fact_input import SCOPES
from stigmem.limits import MAX_RELATION_LENGTH
from stigmem.models import Job
from stigmem.queries import parse_bool
from stigmem.values import text_problem

JOB_KIND = "decay"
# Durations are bounded so that "now minus the TTL" stays a valid datetime and fits a 64-bit
# column on every backend: 100 years is far beyond any useful TTL or half-life.
MAX_SECONDS = 100 * 365 * 86400
# The 202's estimate: facts a worker sweeps per second (bench/ figures, rounded down).
ESTIMATE_FACTS_PER_S = 200_000
MAX_NAME_LENGTH = 200
BUSY_DETAIL = "a decay sweep of this tenant is already running"
POLICY_FIELDS = ("name", "relation_prefix", "scope", "ttl_seconds", "half_life_seconds", "min_confidence", "enabled")
RULE_FIELDS = ("ttl_seconds", "half_life_seconds", "min_confidence")


def busy() -> ApiError:
    return ApiError(409, BUSY_DETAIL)


# --- POST /v1/decay/sweep ---------------------------------------------------------------------


def parse_sweep_query(tenant: str, params) -> SweepRequest:
    """The sweep's query string: 422 for out-of-range numbers or a bad boolean, 400 for an unknown scope."""
    errors: list = []
    ttl_seconds = None
    raw_ttl = params.get("ttl_seconds")
    if raw_ttl not in (None, ""):
        try:
            ttl_seconds = int(raw_ttl.strip())
        except ValueError:
            errors.append(
                field_error(
                    ["query", "ttl_seconds"],
                    "Input should be a valid integer, unable to parse string as an integer",
                    "int_parsing",
                )
            )
        else:
            if not 0 <= ttl_seconds <= MAX_SECONDS:
                errors.append(
                    field_error(["query", "ttl_seconds"], f"ttl_seconds must be from 0 to {MAX_SECONDS}", "range_error")
                )
    min_confidence = None
    raw_conf = params.get("min_confidence")
    if raw_conf not in (None, ""):
        try:
            min_confidence = float(raw_conf)
        except ValueError:
            errors.append(
                field_error(
                    ["query", "min_confidence"],
                    "Input should be a valid number, unable to parse string as a number",
                    "float_parsing",
                )
            )
        else:
            if not 0.0 <= min_confidence <= 1.0:  # NaN fails this too
                errors.append(
                    field_error(
                        ["query", "min_confidence"], "min_confidence must be a number from 0 to 1", "confidence_range"
                    )
                )
    dry_run = parse_bool(params, "dry_run", False, errors)
    if errors:
        raise InputInvalid(errors)
    scope = params.get("scope") or None
    if scope is not None and scope not in SCOPES:
        raise coded(400, "invalid_scope", f"scope must be one of {', '.join(SCOPES)}")
    return SweepRequest(
        tenant=tenant, scope=scope, ttl_seconds=ttl_seconds, min_confidence=min_confidence, dry_run=dry_run
    )


@dataclass
class SweepOutcome:
    """Either the finished sweep's result (200) or the queued job (202)."""

    result: SweepResult | None = None
    job: Job | None = None


def estimate_s(facts: int) -> int:
    return max(1, math.ceil(facts / ESTIMATE_FACTS_PER_S))


def active_job(tenant: str) -> Job | None:
    return (
        Job.objects.filter(tenant=tenant, kind=JOB_KIND, status__in=[Job.Status.PENDING, Job.Status.RUNNING])
        .order_by("created_at")
        .first()
    )


def start_sweep(caller: Caller, request: SweepRequest) -> SweepOutcome:
    """Run the sweep now, or, for a real sweep over more facts than the threshold, queue a job.

    A dry run is always synchronous (it writes nothing, so it holds no writer up). While a queued
    sweep of the tenant is unfinished, another large sweep is refused (409) rather than queued
    behind it, as a synchronous sweep is while one runs.
    """
    if not request.dry_run:
        in_scope = facts_in_scope(request.tenant, request.scope)
        if in_scope > settings.STIGMEM_ASYNC_JOB_THRESHOLD:
            return SweepOutcome(job=_queue(caller, request, in_scope))
    try:
        return SweepOutcome(result=run_sweep(request, actor=caller.entity_uri))
    except SweepBusy:
        raise busy() from None


def job_params(request: SweepRequest) -> dict[str, Any]:
    return {"ttl_seconds": request.ttl_seconds, "min_confidence": request.min_confidence}


def request_of(job: Job) -> SweepRequest:
    """The sweep a job stands for (what ``job_params`` stored)."""
    params = job.params or {}
    return SweepRequest(
        tenant=job.tenant,
        scope=job.scope or None,
        ttl_seconds=params.get("ttl_seconds"),
        min_confidence=params.get("min_confidence"),
        dry_run=job.dry_run,
    )


def _queue(caller: Caller, request: SweepRequest, in_scope: int) -> Job:
    from decay import tasks  # tasks imports this module

    with transaction.atomic():
        # Not a lock: two requests racing past this check queue two jobs, which is harmless, as
        # the sweep lock runs them one after the other (the second waits pending, see run_job).
        if active_job(request.tenant) is not None:
            raise busy()
        job = jobs.create_job(
            request.tenant,
            JOB_KIND,
            params=job_params(request),
            scope=request.scope,
            dry_run=request.dry_run,
            estimated_s=estimate_s(in_scope),
            created_by=caller.entity_uri,
        )
        audit.record(
            request.tenant,
            "decay_job_created",
            actor=caller.entity_uri,
            target=str(job.id),
            detail={**job_params(request), "scope": request.scope, "facts_in_scope": in_scope},
        )
        # Enqueued only once the job row is committed, so the worker always finds it; if the
        # process dies before enqueueing, ``decay.tasks.resume_jobs`` picks the pending job up.
        transaction.on_commit(lambda: tasks.enqueue(job.id))
    return job


# --- policies -------------------------------------------------------------------------------


def policy_record(policy: DecayPolicy) -> dict[str, Any]:
    return {
        "id": policy.pk,
        "name": policy.name,
        "relation_prefix": policy.relation_prefix,
        "scope": policy.scope or None,
        "ttl_seconds": policy.ttl_seconds,
        "half_life_seconds": policy.half_life_seconds,
        "min_confidence": policy.min_confidence,
        "enabled": policy.enabled,
        "created_at": policy.created_at.isoformat(),
        "updated_at": policy.updated_at.isoformat(),
    }


def list_policies(tenant: str) -> list[DecayPolicy]:
    """Enabled and disabled alike, in the order they apply (``decay.policies.precedence``): longest
    relation prefix first, then a named scope before "any scope", then the oldest."""
    return sorted(DecayPolicy.objects.filter(tenant=tenant), key=policies.precedence)


def get_policy(tenant: str, policy_id: str, *, for_update: bool = False) -> DecayPolicy:
    """The tenant's policy; 404 ``policy not found`` for a malformed id, an unknown one or another tenant's."""
    try:
        pk = int(policy_id)
    except (TypeError, ValueError):
        raise not_found("policy") from None
    if not 0 < pk < 2**63:
        raise not_found("policy")
    rows = DecayPolicy.objects.filter(tenant=tenant, pk=pk)
    policy = (rows.select_for_update() if for_update else rows).first()
    if policy is None:
        raise not_found("policy")
    return policy


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(body: dict, name: str, minimum: int, errors: list) -> int | None:
    value = body[name]
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_SECONDS:
        errors.append(
            field_error(
                ["body", name], f"{name} must be null or an integer from {minimum} to {MAX_SECONDS}", "range_error"
            )
        )
        return None
    return value


def _parse_policy_fields(body: Any, *, partial: bool) -> dict[str, Any]:
    """The fields present in a create (all, with defaults) or update (only those given) body."""
    if not isinstance(body, dict):
        raise InputInvalid([field_error(["body"], "expected a JSON object", "dict_type")])
    errors: list = []
    given = {name for name in POLICY_FIELDS if name in body}
    if not partial:
        body = {"relation_prefix": "", "scope": None, "enabled": True, **{r: None for r in RULE_FIELDS}, **body}
        given = set(POLICY_FIELDS)
    fields: dict[str, Any] = {}
    if "name" in given:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
            errors.append(
                field_error(
                    ["body", "name"],
                    f"name must be a non-empty string of at most {MAX_NAME_LENGTH} characters",
                    "string_type",
                )
            )
        elif (problem := text_problem(name)) is not None:
            errors.append(field_error(["body", "name"], f"name {problem}", "string_unicode"))
        else:
            fields["name"] = name.strip()
    if "relation_prefix" in given:
        prefix = body["relation_prefix"]
        if prefix is None:
            prefix = ""
        if not isinstance(prefix, str) or len(prefix) > MAX_RELATION_LENGTH:
            errors.append(
                field_error(
                    ["body", "relation_prefix"],
                    f"relation_prefix must be a string of at most {MAX_RELATION_LENGTH} characters",
                    "string_type",
                )
            )
        elif (problem := text_problem(prefix)) is not None:
            errors.append(field_error(["body", "relation_prefix"], f"relation_prefix {problem}", "string_unicode"))
        else:
            fields["relation_prefix"] = prefix
    if "scope" in given:
        scope = body["scope"]
        if scope in (None, ""):
            fields["scope"] = ""
        elif isinstance(scope, str) and scope in SCOPES:
            fields["scope"] = scope
        else:
            errors.append(
                field_error(
                    ["body", "scope"], f"scope must be null (any scope) or one of {', '.join(SCOPES)}", "literal_error"
                )
            )
    if "ttl_seconds" in given:
        fields["ttl_seconds"] = _seconds(body, "ttl_seconds", 0, errors)
    if "half_life_seconds" in given:
        fields["half_life_seconds"] = _seconds(body, "half_life_seconds", 1, errors)
    if "min_confidence" in given:
        floor = body["min_confidence"]
        if floor is not None and (not _number(floor) or not 0.0 <= floor <= 1.0):
            errors.append(
                field_error(
                    ["body", "min_confidence"],
                    "min_confidence must be null or a number from 0 to 1",
                    "confidence_range",
                )
            )
        else:
            fields["min_confidence"] = None if floor is None else float(floor)
    if "enabled" in given:
        if not isinstance(body["enabled"], bool):
            errors.append(field_error(["body", "enabled"], "enabled must be a boolean", "bool_type"))
        else:
            fields["enabled"] = body["enabled"]
    if errors:
        raise InputInvalid(errors)
    return fields


def _require_a_rule(policy: DecayPolicy) -> None:
    if all(getattr(policy, name) is None for name in RULE_FIELDS):
        raise InputInvalid(
            [
                field_error(
                    ["body"], "at least one of ttl_seconds, half_life_seconds, min_confidence must be set", "missing"
                )
            ]
        )


def _duplicate(policy: DecayPolicy) -> ApiError | None:
    clash = (
        DecayPolicy.objects.filter(tenant=policy.tenant, relation_prefix=policy.relation_prefix, scope=policy.scope)
        .exclude(pk=policy.pk)
        .values_list("pk", flat=True)
        .first()
    )
    if clash is None:
        return None
    return ApiError(409, f"a policy with this relation_prefix and scope exists: {clash}")


def _save(policy: DecayPolicy) -> None:
    """Save, answering 409 for a second policy with the same match (checked, and enforced by the constraint)."""
    if (conflict := _duplicate(policy)) is not None:
        raise conflict
    try:
        with transaction.atomic():
            policy.save()
    except IntegrityError:  # a concurrent create of the same match won the race
        raise _duplicate(policy) or ApiError(409, "a policy with this relation_prefix and scope exists") from None


def create_policy(caller: Caller, body: Any) -> DecayPolicy:
    fields = _parse_policy_fields(body, partial=False)
    policy = DecayPolicy(tenant=caller.tenant, created_by=caller.entity_uri[:512], **fields)
    _require_a_rule(policy)
    with transaction.atomic():
        _save(policy)
        audit.record(
            caller.tenant,
            "decay_policy_created",
            actor=caller.entity_uri,
            target=str(policy.pk),
            detail=audit_detail(policy),
        )
        policies.changed(caller.tenant)
    return policy


def update_policy(caller: Caller, policy_id: str, body: Any) -> DecayPolicy:
    with transaction.atomic():
        policy = get_policy(caller.tenant, policy_id, for_update=True)
        fields = _parse_policy_fields(body, partial=True)
        before = audit_detail(policy)
        for name, value in fields.items():
            setattr(policy, name, value)
        _require_a_rule(policy)
        _save(policy)
        audit.record(
            caller.tenant,
            "decay_policy_updated",
            actor=caller.entity_uri,
            target=str(policy.pk),
            detail={"before": before, "after": audit_detail(policy)},
        )
        policies.changed(caller.tenant)
    return policy


def delete_policy(caller: Caller, policy_id: str) -> None:
    with transaction.atomic():
        policy = get_policy(caller.tenant, policy_id, for_update=True)
        detail = audit_detail(policy)
        target = str(policy.pk)
        policy.delete()
        audit.record(caller.tenant, "decay_policy_deleted", actor=caller.entity_uri, target=target, detail=detail)
        policies.changed(caller.tenant)


def audit_detail(policy: DecayPolicy) -> dict[str, Any]:
    """A policy as its audit rows record it (the API and the admin write the same shape)."""
    return {
        "name": policy.name,
        "relation_prefix": policy.relation_prefix,
        "scope": policy.scope or None,
        "ttl_seconds": policy.ttl_seconds,
        "half_life_seconds": policy.half_life_seconds,
        "min_confidence": policy.min_confidence,
        "enabled": policy.enabled,
    }
