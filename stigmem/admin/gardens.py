"""The operator console for memory gardens: gardens with their members inline.

Changes made here follow the API's rules: slugs and member URIs are normalized the same way, a
garden always keeps at least one admin member, and every change writes an audit row (actor
``admin:<username>``) in the admin's transaction.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from stigmem.fact_input import SCOPES
from stigmem.gardens import SLUG_PATTERN, garden_uri_for, normalize_slug, record_event
from stigmem.models import Garden, GardenMember
from stigmem.normalize import UriInvalid, normalize_uri
from stigmem.values import text_problem


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


class GardenForm(forms.ModelForm):
    scope = forms.ChoiceField(choices=[(scope, scope) for scope in SCOPES], initial="company")

    class Meta:
        model = Garden
        fields = ("tenant", "slug", "name", "scope", "description")

    def clean_slug(self) -> str:
        slug = normalize_slug(self.cleaned_data["slug"])
        if slug is None:
            raise forms.ValidationError(f"A slug must match ^{SLUG_PATTERN.pattern}$ (after lowercasing).")
        return slug


class GardenMemberForm(forms.ModelForm):
    class Meta:
        model = GardenMember
        fields = ("entity_uri", "role")

    def clean_entity_uri(self) -> str:
        # Same normalization as the API, so the member matches the identity of its API keys.
        raw = self.cleaned_data["entity_uri"]
        if (problem := text_problem(raw)) is not None:
            raise forms.ValidationError(f"The entity URI {problem}.")
        try:
            return normalize_uri(raw).uri
        except UriInvalid as exc:
            raise forms.ValidationError(str(exc)) from None


class GardenMemberFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        kept = [
            form
            for form in self.forms
            if form.cleaned_data and not (self.can_delete and self._should_delete_form(form))
        ]
        if not any(form.cleaned_data.get("role") == Garden.Role.ADMIN for form in kept):
            raise forms.ValidationError("A garden needs at least one member with the admin role.")


class GardenMemberInline(admin.TabularInline):
    model = GardenMember
    form = GardenMemberForm
    formset = GardenMemberFormSet
    fields = ("entity_uri", "role", "added_by", "added_at")
    readonly_fields = ("added_by", "added_at")
    ordering = ("added_at", "id")
    extra = 1


@admin.register(Garden)
class GardenAdmin(admin.ModelAdmin):
    form = GardenForm
    inlines = [GardenMemberInline]
    list_display = ("slug", "name", "tenant", "scope", "member_count", "created_by", "created_at")
    list_filter = ("tenant", "scope")
    search_fields = ("slug", "name")
    ordering = ("tenant", "slug")

    def get_readonly_fields(self, request: HttpRequest, obj: Garden | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # The slug is in the garden URI clients hold, and facts were written with the garden's scope.
        return ("tenant", "slug", "garden_uri", "scope", "created_by", "created_at")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"tenant": settings.STIGMEM_DEFAULT_TENANT, "scope": "company"}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Garden]:
        return super().get_queryset(request).annotate(member_total=Count("members"))

    @admin.display(description="members", ordering="member_total")
    def member_count(self, garden: Garden) -> int:
        return garden.member_total

    @admin.display(description="garden URI")
    def garden_uri(self, garden: Garden) -> str:
        return garden_uri_for(garden.slug)

    def save_model(self, request: HttpRequest, obj: Garden, form, change: bool) -> None:
        if not change:
            obj.created_by = _actor(request)
            obj.created_at = timezone.now()
        super().save_model(request, obj, form, change)
        if not change:
            record_event(obj.tenant, _actor(request), "garden_created", obj, {"name": obj.name, "scope": obj.scope})

    def save_formset(self, request: HttpRequest, form, formset, change: bool) -> None:
        garden: Garden = form.instance
        actor = _actor(request)
        before = {member.pk: member for member in GardenMember.objects.filter(garden=garden)}
        members = formset.save(commit=False)
        for member in formset.deleted_objects:
            stored = before.get(member.pk, member)
            detail = {"entity_uri": stored.entity_uri, "role": stored.role}
            member.delete()
            record_event(garden.tenant, actor, "garden_member_removed", garden, detail)
        for member in members:
            if member.pk is None:
                member.added_by = actor
                member.added_at = timezone.now()
                member.save()
                detail = {"entity_uri": member.entity_uri, "role": member.role}
                record_event(garden.tenant, actor, "garden_member_added", garden, detail)
            else:
                member.save()
                stored = before.get(member.pk, member)
                detail = {"entity_uri": member.entity_uri, "role": member.role, "previous_role": stored.role}
                if stored.entity_uri != member.entity_uri:
                    detail["previous_entity_uri"] = stored.entity_uri
                record_event(garden.tenant, actor, "garden_member_changed", garden, detail)
        formset.save_m2m()

    def delete_model(self, request: HttpRequest, obj: Garden) -> None:
        record_event(obj.tenant, _actor(request), "garden_deleted", obj, {"name": obj.name, "scope": obj.scope})
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Garden]) -> None:
        with transaction.atomic():
            for garden in queryset:
                detail = {"name": garden.name, "scope": garden.scope}
                record_event(garden.tenant, _actor(request), "garden_deleted", garden, detail)
            super().delete_queryset(request, queryset)
