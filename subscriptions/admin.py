"""Subscriptions in the operator console: status, circuit, failures, and the service's actions.

Every action goes through ``subscriptions.service`` like the API, so each one is locked against
delivery workers and audited (actor ``admin:<username>``). Subscriptions are created through the
API only (the SSRF guard, target resolution and secret issuing live there).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from subscriptions import service
from subscriptions.models import Subscription

# Shown once after a rotation, never listed: the secret is a credential.
_SECRETS = ("signing_secret", "previous_secret")


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "tenant",
        "subscriber_identity",
        "target_kind",
        "target",
        "on_change",
        "delivery_address",
        "status",
        "circuit",
        "consecutive_failures",
        "failing_since",
        "last_delivered_at",
        "short_last_error",
    )
    list_filter = ("tenant", "status", "circuit", "target_kind", "on_change")
    search_fields = ("=id", "subscriber_identity", "target", "delivery_address")
    ordering = ("-created_at",)
    readonly_fields = [f.name for f in Subscription._meta.fields if f.name not in _SECRETS]
    exclude = _SECRETS
    actions = ["pause", "resume", "reset_circuit", "rotate_secret", "recover_failed"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        # Viewable; changed only through the actions (a raw edit would bypass the locks and the audit).
        return False

    @admin.display(description="last error")
    def short_last_error(self, obj: Subscription) -> str:
        return obj.last_error[:120]

    def _each(self, request: HttpRequest, queryset: QuerySet[Subscription], verb: str, action) -> None:
        for subscription in queryset:
            action(subscription, _actor(request))
        self.message_user(request, f"{verb} {queryset.count()} subscription(s).", messages.SUCCESS)

    @admin.action(description="Pause the selected subscriptions")
    def pause(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._each(request, queryset, "Paused", service.pause)

    @admin.action(description="Resume the selected subscriptions (re-activates disabled ones)")
    def resume(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._each(request, queryset, "Resumed", service.resume)

    @admin.action(description="Reset the circuit breaker and failure counts")
    def reset_circuit(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._each(request, queryset, "Reset the circuit of", service.reset_circuit)

    @admin.action(description="Rotate the signing secret (the old one signs for 24 h more)")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        for subscription in queryset:
            secret = service.rotate_secret(subscription, _actor(request))
            # The only time the operator sees it: the subscriber must be given the new secret.
            self.message_user(request, f"New signing secret of {subscription.id}: {secret}", messages.WARNING)

    @admin.action(description="Queue every failed event again")
    def recover_failed(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        requeued = sum(service.recover(subscription, None, _actor(request)) for subscription in queryset)
        self.message_user(request, f"Queued {requeued} failed event(s) again.", messages.SUCCESS)
