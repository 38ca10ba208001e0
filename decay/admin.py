"""Decay in the operator console: background jobs, decay policies, and a dry-run preview of a policy.

Jobs are written by the API and the workers only, so their admin is read-only. Policies are
edited here with the same rules as ``/v1/decay/policies``; every save or delete forgets the
tenant's cached policies (``decay.policies.changed``) in the admin's transaction, so reads see
the change at once, and writes an audit row (actor ``admin:<username>``).

The preview asks ``decay.sweep.preview`` what a policy would expire if it ran now and shows the
count and a sample; it changes nothing, so it needs only the view permission.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from decay import policies, service, sweep
from decay.models import DecayPolicy
from stigmem import audit
from stigmem.fact_input import SCOPES
from stigmem.jobs import job_record
from stigmem.limits import MAX_RELATION_LENGTH
from stigmem.models import Fact, Job
from stigmem.values import text_problem

PREVIEW_SAMPLE = 20
_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def human_duration(seconds: float | None) -> str:
    """``90061`` → ``1 d 1 h 1 min 1 s``: exact, so an operator reads the policy as stored."""
    if seconds is None:
        return "-"
    rest = round(seconds)
    if rest == 0:
        return "0 s"
    parts = []
    for unit, size in _UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {unit}")
    return " ".join(parts)


# --- jobs ------------------------------------------------------------------------------------------


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Every kind of job (only decay sweeps exist so far); filter by kind to narrow it."""

    list_display = (
        "id",
        "status",
        "tenant",
        "kind",
        "scope_shown",
        "dry_run",
        "progress_bar",
        "scanned",
        "decayed",
        "created_at",
        "started_at",
        "completed_at",
        "duration",
        "short_error",
    )
    list_filter = ("status", "tenant", "kind", "dry_run")
    search_fields = ("=id", "created_by")
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("id", "tenant", "kind", "status", "scope", "dry_run", "params", "created_by")}),
        (
            "Progress",
            {
                "fields": (
                    "progress_bar",
                    "scanned",
                    "decayed",
                    "position",
                    "estimated_s",
                    "created_at",
                    "started_at",
                    "completed_at",
                    "duration",
                )
            },
        ),
        ("Worker", {"fields": ("lease_owner", "lease_until", "error")}),
        ("As the API returns it", {"fields": ("api_record",)}),
    )
    readonly_fields = [f.name for f in Job._meta.fields] + ["progress_bar", "duration", "api_record"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are started by POST /v1/decay/sweep

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # a raw edit would fight the worker that holds the lease

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # callers poll the job by id; it stays as the record of the run

    @admin.display(description="scope", ordering="scope")
    def scope_shown(self, job: Job) -> str:
        return job.scope or "all"

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, job: Job) -> str:
        percent = max(0.0, min(1.0, job.progress)) * 100
        return format_html(
            '<progress value="{}" max="100" style="width: 6em;"></progress> {}%', f"{percent:.0f}", f"{percent:.0f}"
        )

    @admin.display(description="duration")
    def duration(self, job: Job) -> str:
        if job.started_at is None:
            return "-"
        end = job.completed_at or timezone.now()
        text = human_duration((end - job.started_at).total_seconds())
        return text if job.completed_at is not None else f"{text} so far"

    @admin.display(description="error")
    def short_error(self, job: Job) -> str:
        return job.error if len(job.error) <= 120 else job.error[:119] + "…"

    @admin.display(description="record")
    def api_record(self, job: Job) -> str:
        return format_html("<pre>{}</pre>", json.dumps(job_record(job), indent=2, ensure_ascii=False, default=str))


# --- policies --------------------------------------------------------------------------------------


class DecayPolicyForm(forms.ModelForm):
    """The API's rules: at least one rule, non-negative TTL, positive half-life, floor in 0..1,
    a known scope, and no second policy with the same match in the tenant."""

    scope = forms.ChoiceField(
        choices=[("", "any scope")] + [(scope, scope) for scope in SCOPES],
        required=False,
        help_text="The scope of the facts this policy governs.",
    )
    relation_prefix = forms.CharField(
        required=False,
        max_length=MAX_RELATION_LENGTH,
        help_text="Facts whose relation starts with this; empty for every relation.",
    )
    ttl_seconds = forms.IntegerField(
        label="TTL (seconds)",
        required=False,
        min_value=0,
        max_value=service.MAX_SECONDS,
        help_text="Facts without valid_until older than this expire (86400 = 1 day; 0 = all of them).",
    )
    half_life_seconds = forms.IntegerField(
        label="Half-life (seconds)",
        required=False,
        min_value=1,
        max_value=service.MAX_SECONDS,
        help_text="effective_confidence = confidence x 0.5^(age / half-life) on reads (604800 = 7 days).",
    )
    min_confidence = forms.FloatField(
        label="Confidence floor",
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="Current facts whose effective confidence falls below this (0..1) expire.",
    )

    class Meta:
        model = DecayPolicy
        fields = (
            "tenant",
            "name",
            "relation_prefix",
            "scope",
            "ttl_seconds",
            "half_life_seconds",
            "min_confidence",
            "enabled",
        )

    def _text(self, name: str, what: str) -> str:
        value = self.cleaned_data[name]
        if (problem := text_problem(value)) is not None:
            raise forms.ValidationError(f"The {what} {problem}.")
        return value

    def clean_name(self) -> str:
        return self._text("name", "name")

    def clean_relation_prefix(self) -> str:
        return self._text("relation_prefix", "relation prefix")

    def clean_tenant(self) -> str:
        return self._text("tenant", "tenant")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        rules = ("ttl_seconds", "half_life_seconds", "min_confidence")
        if not self.errors and all(data.get(rule) is None for rule in rules):
            raise forms.ValidationError("Set at least one of TTL, half-life and confidence floor.")
        # On the add form Django checks the unique match itself; on the change form the tenant is
        # not a form field, so Django skips the check and the save would fail with a 500.
        if "tenant" not in self.fields:
            self._check_match(data)
        return data

    def _check_match(self, data: dict[str, Any]) -> None:
        prefix, scope = data.get("relation_prefix"), data.get("scope")
        if prefix is None or scope is None:
            return
        clash = DecayPolicy.objects.filter(tenant=self.instance.tenant, relation_prefix=prefix, scope=scope)
        other = clash.exclude(pk=self.instance.pk).first()
        if other is not None:
            raise forms.ValidationError(
                f"The policy “{other.name}” already has this relation prefix and scope in tenant {other.tenant}."
            )


@admin.register(DecayPolicy)
class DecayPolicyAdmin(admin.ModelAdmin):
    form = DecayPolicyForm
    list_display = (
        "name",
        "tenant",
        "relation_prefix_shown",
        "scope_shown",
        "ttl",
        "half_life",
        "min_confidence",
        "enabled",
        "updated_at",
    )
    list_filter = ("tenant", "enabled", "scope")
    search_fields = ("name", "relation_prefix")
    ordering = ("tenant", "relation_prefix", "scope")
    actions = ["preview_expiry"]

    def get_readonly_fields(self, request: HttpRequest, obj: DecayPolicy | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Moving a policy to another tenant is a delete there and a create here; do that instead.
        return ("tenant", "created_by", "created_at", "updated_at")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"tenant": settings.STIGMEM_DEFAULT_TENANT, "enabled": True}

    @admin.display(description="relation prefix", ordering="relation_prefix")
    def relation_prefix_shown(self, policy: DecayPolicy) -> str:
        return policy.relation_prefix or "any"

    @admin.display(description="scope", ordering="scope")
    def scope_shown(self, policy: DecayPolicy) -> str:
        return policy.scope or "any"

    @admin.display(description="TTL", ordering="ttl_seconds")
    def ttl(self, policy: DecayPolicy) -> str:
        return human_duration(policy.ttl_seconds)

    @admin.display(description="half-life", ordering="half_life_seconds")
    def half_life(self, policy: DecayPolicy) -> str:
        return human_duration(policy.half_life_seconds)

    # --- writes: audit and cache -------------------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: DecayPolicy, form, change: bool) -> None:
        # The admin's change view runs in a transaction: the row, its audit entry and the cache
        # invalidation (again on commit) go together.
        if change:
            before = service.audit_detail(DecayPolicy.objects.get(pk=obj.pk))
        else:
            obj.created_by = _actor(request)
        super().save_model(request, obj, form, change)
        if change:
            event, detail = "decay_policy_updated", {"before": before, "after": service.audit_detail(obj)}
        else:
            event, detail = "decay_policy_created", service.audit_detail(obj)
        audit.record(obj.tenant, event, actor=_actor(request), target=str(obj.pk), detail=detail)
        policies.changed(obj.tenant)

    def delete_model(self, request: HttpRequest, obj: DecayPolicy) -> None:
        tenant, target, detail = obj.tenant, str(obj.pk), service.audit_detail(obj)
        super().delete_model(request, obj)
        audit.record(tenant, "decay_policy_deleted", actor=_actor(request), target=target, detail=detail)
        policies.changed(tenant)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[DecayPolicy]) -> None:
        with transaction.atomic():
            doomed = [(policy.tenant, str(policy.pk), service.audit_detail(policy)) for policy in queryset]
            super().delete_queryset(request, queryset)
            for tenant, target, detail in doomed:
                audit.record(tenant, "decay_policy_deleted", actor=_actor(request), target=target, detail=detail)
            for tenant in {tenant for tenant, _, _ in doomed}:
                policies.changed(tenant)

    # --- the dry-run preview -----------------------------------------------------------------------

    def get_urls(self):
        preview = self.admin_site.admin_view(self.preview_view)
        return [path("<path:object_id>/preview/", preview, name="decay_decaypolicy_preview"), *super().get_urls()]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["preview_url"] = reverse("admin:decay_decaypolicy_preview", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.action(description="Dry-run preview: what the selected policies would expire now", permissions=["view"])
    def preview_expiry(self, request: HttpRequest, queryset: QuerySet[DecayPolicy]) -> TemplateResponse:
        return self._preview(request, list(queryset.order_by("tenant", "name", "pk")))

    def preview_view(self, request: HttpRequest, object_id: str) -> TemplateResponse:
        policy = self.get_object(request, object_id)
        if policy is None:
            raise Http404("No such decay policy.")
        if not self.has_view_permission(request, policy):
            raise PermissionDenied
        return self._preview(request, [policy])

    def _preview(self, request: HttpRequest, selected: list[DecayPolicy]) -> TemplateResponse:
        now = timezone.now()
        rows = []
        for policy in selected:
            count, facts = sweep.preview(policy, limit=PREVIEW_SAMPLE)
            rows.append(
                {"policy": policy, "count": count, "sample": [_sample_row(policy, fact, now) for fact in facts]}
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Dry-run preview of decay policies",
            "rows": rows,
            "now": now,
            "sample_size": PREVIEW_SAMPLE,
        }
        return TemplateResponse(request, "admin/decay/decaypolicy/preview.html", context)


def _sample_row(policy: DecayPolicy, fact: Fact, now) -> dict[str, Any]:
    # Computed with the previewed policy's half-life: the preview answers "what would this policy do".
    effective = None
    if policy.half_life_seconds:
        effective = policies.decayed(fact.confidence, (now - fact.timestamp).total_seconds(), policy.half_life_seconds)
    return {
        "fact": fact,
        "url": reverse("admin:stigmem_fact_change", args=[fact.pk]),
        "value": fact.value_v[:80],
        "effective_confidence": effective,
    }
