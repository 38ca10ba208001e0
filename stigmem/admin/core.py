"""The operator console for the core: facts, conflicts, API keys, node identity."""

from __future__ import annotations

import uuid

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from stigmem.keys import default_expiry, issue_key, revoke_keys
from stigmem.models import PERMISSIONS, ApiKey, Conflict, Fact, NodeClock, NodeIdentity
from stigmem.normalize import UriInvalid, normalize_uri


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the node itself: operators inspect them, never edit them here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Fact)
class FactAdmin(ReadOnlyAdmin):
    list_display = (
        "seq",
        "entity",
        "relation",
        "short_value",
        "source",
        "scope",
        "confidence",
        "timestamp",
        "contradicted",
    )
    list_filter = ("tenant", "scope", "value_type", "contradicted")
    search_fields = ("=id", "=cid", "entity", "relation", "source")
    ordering = ("-seq",)
    show_full_result_count = False
    readonly_fields = [f.name for f in Fact._meta.fields] + ["conflicts_link"]

    @admin.display(description="value")
    def short_value(self, fact: Fact) -> str:
        return fact.value_v[:80]

    @admin.display(description="conflicts")
    def conflicts_link(self, fact: Fact) -> str:
        url = reverse("admin:stigmem_conflict_changelist") + f"?q={fact.id}"
        return format_html('<a href="{}">conflicts involving this fact</a>', url)

    def get_list_filter(self, request: HttpRequest):
        return (*self.list_filter, RelationFilter, SourceFilter)


class _ExactTextFilter(admin.SimpleListFilter):
    """Filter by an exact value typed in the URL (``?relation=...``), without a full scan of choices."""

    def lookups(self, request, model_admin):
        value = self.value()
        return [(value, value)] if value else []

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(**{self.parameter_name: value}) if value else queryset


class RelationFilter(_ExactTextFilter):
    title = "relation"
    parameter_name = "relation"


class SourceFilter(_ExactTextFilter):
    title = "source"
    parameter_name = "source"


@admin.register(Conflict)
class ConflictAdmin(ReadOnlyAdmin):
    list_display = ("id", "tenant", "status", "fact_a_link", "fact_b_link", "detected_at", "resolved_by")
    list_filter = ("tenant", "status")
    search_fields = ("=id", "=fact_a__id", "=fact_b__id")
    ordering = ("-detected_at",)
    readonly_fields = [f.name for f in Conflict._meta.fields]

    def get_search_results(self, request, queryset, search_term):
        # One search box for conflict ids and the ids of either fact (linked from facts).
        try:
            term = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(Q(id=term) | Q(fact_a_id=term) | Q(fact_b_id=term)), False

    @staticmethod
    def _fact_link(fact: Fact) -> str:
        url = reverse("admin:stigmem_fact_change", args=[fact.pk])
        return format_html('<a href="{}">{}</a>', url, f"{fact.source}: {fact.value_v[:40]}")

    @admin.display(description="fact A")
    def fact_a_link(self, conflict: Conflict) -> str:
        return self._fact_link(conflict.fact_a)

    @admin.display(description="fact B")
    def fact_b_link(self, conflict: Conflict) -> str:
        return self._fact_link(conflict.fact_b)


class ApiKeyCreateForm(forms.ModelForm):
    permissions = forms.MultipleChoiceField(choices=[(p, p) for p in PERMISSIONS], widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ("tenant", "entity_uri", "permissions", "description", "expires_at")

    def clean_entity_uri(self) -> str:
        # Same normalization as keys created over the API, so the key's identity matches facts.
        try:
            return normalize_uri(self.cleaned_data["entity_uri"]).uri
        except UriInvalid as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("key_prefix", "entity_uri", "tenant", "permission_list", "created_at", "expires_at", "revoked_at")
    list_filter = ("tenant",)
    search_fields = ("entity_uri", "key_prefix", "=id")
    ordering = ("-created_at",)
    actions = ["revoke_keys"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return [f.name for f in ApiKey._meta.fields if f.name != "description"]

    def get_changeform_initial_data(self, request):
        return {"tenant": settings.STIGMEM_DEFAULT_TENANT, "expires_at": default_expiry(timezone.now())}

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            obj.save(update_fields=["description"])
            return
        issued = issue_key(
            tenant=obj.tenant,
            entity_uri=obj.entity_uri,
            permissions=form.cleaned_data["permissions"],
            description=obj.description,
            expires_at=obj.expires_at,
            created_by=f"admin:{request.user.get_username()}",
        )
        obj.pk = issued.key.pk
        obj._state.adding = False
        messages.warning(request, f"New API key (shown once, copy it now): {issued.raw_key}")

    @admin.display(description="permissions")
    def permission_list(self, key: ApiKey) -> str:
        return ", ".join(key.permissions)

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset) -> None:
        count = revoke_keys(queryset, actor=f"admin:{request.user.get_username()}")
        self.message_user(request, f"Revoked {count} key(s).")

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # revoke instead: the row stays for the audit trail


@admin.register(NodeIdentity)
class NodeIdentityAdmin(ReadOnlyAdmin):
    list_display = ("node_id", "created_at", "worker_heartbeat_at")
    readonly_fields = ("node_id", "created_at", "worker_heartbeat_at", "clock")

    @admin.display(description="clock")
    def clock(self, identity: NodeIdentity) -> str:
        return str(NodeClock.objects.filter(pk=1).first())
