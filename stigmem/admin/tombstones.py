"""The operator console for tombstones and their revocations.

Creating and revoking go through ``stigmem.tombstones`` like the API, so every tombstone made
here is normalized, signed with the node key and audited (actor ``admin:<username>``). Stored
rows are never edited or deleted: a tombstone is revoked, and the revocation is a signed row too.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.http import HttpRequest

from stigmem import signing
from stigmem.errors import ApiError
from stigmem.limits import MAX_URI_LENGTH
from stigmem.models import TOMBSTONE_SCOPES, Tombstone, TombstoneRevocation
from stigmem.normalize import UriInvalid, normalize_uri
from stigmem.tombstones import (
    MAX_REASON_LENGTH,
    create_tombstone,
    revoke_tombstone,
    verify_revocation,
    verify_tombstone,
)
from stigmem.values import text_problem


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _check_text(value: str, what: str) -> str:
    if (problem := text_problem(value)) is not None:
        raise forms.ValidationError(f"The {what} {problem}.")
    return value


class TombstoneCreateForm(forms.ModelForm):
    scope = forms.ChoiceField(
        choices=[(scope, "every scope (*)" if scope == "*" else scope) for scope in TOMBSTONE_SCOPES], initial="*"
    )
    entity_uri = forms.CharField(max_length=MAX_URI_LENGTH)
    reason = forms.CharField(required=False, max_length=MAX_REASON_LENGTH, widget=forms.Textarea(attrs={"rows": 3}))

    class Meta:
        model = Tombstone
        fields = ("tenant", "entity_uri", "scope", "reason", "legal_hold")

    def clean_entity_uri(self) -> str:
        # Same normalization as facts, so that the tombstone matches the facts it must hide.
        raw = _check_text(self.cleaned_data["entity_uri"], "entity URI")
        try:
            return normalize_uri(raw).uri
        except UriInvalid as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_reason(self) -> str:
        return _check_text(self.cleaned_data["reason"], "reason")


class RevokeActionForm(ActionForm):
    reason = forms.CharField(
        required=False, max_length=MAX_REASON_LENGTH, help_text="Required to revoke: why the tombstone is lifted."
    )


class ActiveFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "active"), ("revoked", "revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revocation__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revocation__isnull=False)
        return queryset


class OriginFilter(admin.SimpleListFilter):
    title = "origin"
    parameter_name = "origin"

    def lookups(self, request, model_admin):
        return [("local", "this node"), ("peer", "a peer")]

    def queryset(self, request, queryset):
        if self.value() == "local":
            return queryset.filter(origin_node_id__isnull=True)
        if self.value() == "peer":
            return queryset.filter(origin_node_id__isnull=False)
        return queryset


class _SignedRowAdmin(admin.ModelAdmin):
    """Signed rows: viewable, never edited or deleted (an edit would void the signature)."""

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Tombstone)
class TombstoneAdmin(_SignedRowAdmin):
    list_display = ("id", "tenant", "entity_uri", "scope", "legal_hold", "created_at", "is_active", "signature_valid")
    list_filter = ("tenant", "scope", "legal_hold", ActiveFilter, OriginFilter)
    search_fields = ("=id", "entity_uri")
    ordering = ("-created_at",)
    list_select_related = ("revocation",)
    readonly_fields = [f.name for f in Tombstone._meta.fields] + ["is_active", "signature_valid"]
    actions = ["revoke_tombstones", "verify_signatures"]
    action_form = RevokeActionForm

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = TombstoneCreateForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_fields(self, request, obj=None):
        if obj is None:
            return TombstoneCreateForm.Meta.fields
        return self.readonly_fields

    def get_changeform_initial_data(self, request):
        return {"tenant": settings.STIGMEM_DEFAULT_TENANT, "scope": "*"}

    def save_model(self, request, obj: Tombstone, form, change: bool) -> None:
        tombstone, created = create_tombstone(
            tenant=obj.tenant,
            entity_uri=obj.entity_uri,
            scope=obj.scope,
            reason=obj.reason,
            legal_hold=obj.legal_hold,
            actor=_actor(request),
        )
        # The admin's own redirect and messages then refer to the stored (signed) row.
        obj.pk = tombstone.pk
        obj._state.adding = False
        if not created:
            messages.warning(request, f"{tombstone.id} already tombstones this entity in this scope; nothing new.")

    @admin.display(description="active", boolean=True)
    def is_active(self, tombstone: Tombstone) -> bool:
        return not hasattr(tombstone, "revocation")

    @admin.display(description="signature valid (node key)", boolean=True)
    def signature_valid(self, tombstone: Tombstone) -> bool | None:
        # A peer's tombstone is signed with the peer's key: the node key cannot judge it.
        if tombstone.origin_node_id is not None:
            return None
        return verify_tombstone(tombstone, signing.public_key_b64())

    @admin.action(description="Revoke selected tombstones (give a reason)")
    def revoke_tombstones(self, request: HttpRequest, queryset) -> None:
        reason = (request.POST.get("reason") or "").strip()
        if not reason or len(reason) > MAX_REASON_LENGTH or text_problem(reason) is not None:
            self.message_user(request, "Type the reason for revoking in the reason field.", messages.ERROR)
            return
        revoked, skipped = 0, 0
        for tombstone in queryset.filter(revocation__isnull=True):
            try:
                revoke_tombstone(
                    tenant=tombstone.tenant, tombstone_id=tombstone.id, reason=reason, actor=_actor(request)
                )
            except ApiError:  # revoked meanwhile by someone else
                skipped += 1
            else:
                revoked += 1
        self.message_user(
            request, f"Revoked {revoked} tombstone(s)." + (f" {skipped} already revoked." if skipped else "")
        )

    @admin.action(description="Verify signatures with the node key")
    def verify_signatures(self, request: HttpRequest, queryset) -> None:
        key = signing.public_key_b64()
        local = list(queryset.filter(origin_node_id__isnull=True))
        invalid = [t.id for t in local if not verify_tombstone(t, key)]
        if invalid:
            self.message_user(request, f"Invalid signature: {', '.join(invalid)}", messages.ERROR)
        else:
            self.message_user(request, f"All {len(local)} signature(s) of this node's tombstones are valid.")


@admin.register(TombstoneRevocation)
class TombstoneRevocationAdmin(_SignedRowAdmin):
    list_display = ("id", "tombstone", "tenant", "revoked_by", "revoked_at", "signature_valid")
    list_filter = ("tombstone__tenant",)
    search_fields = ("=id", "=tombstone__id", "tombstone__entity_uri")
    ordering = ("-revoked_at",)
    list_select_related = ("tombstone",)
    readonly_fields = [f.name for f in TombstoneRevocation._meta.fields] + ["signature_valid"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # revoke from the tombstone list, which signs and audits

    @admin.display(description="tenant")
    def tenant(self, revocation: TombstoneRevocation) -> str:
        return revocation.tombstone.tenant

    @admin.display(description="signature valid (node key)", boolean=True)
    def signature_valid(self, revocation: TombstoneRevocation) -> bool | None:
        if revocation.tombstone.origin_node_id is not None:
            return None
        return verify_revocation(revocation, signing.public_key_b64())
