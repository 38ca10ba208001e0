"""Subscriptions and deliveries in the operator console: status, circuit, failures, and the service's actions.

Every action goes through ``subscriptions.service`` like the API, so each one is locked against
delivery workers and audited (actor ``admin:<username>``). Subscriptions are created through the
API only (the SSRF guard, target resolution and secret issuing live there); deliveries are
written by dispatch and the delivery engine only, so their admin is read-only.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from subscriptions import delivery, service
from subscriptions.models import Delivery, Subscription

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
    actions = ["pause", "resume", "reset_circuit", "rotate_secret", "recover_failed", "send_test_event"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Deleting is the subscriber's call (DELETE /v1/subscriptions/{id}, audited); operators pause.
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        # Viewable; changed only through the actions (a raw edit would bypass the locks and the audit).
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Subscription | None = None) -> list[str]:
        return [*self.readonly_fields, "deliveries_link"]

    @admin.display(description="last error")
    def short_last_error(self, obj: Subscription) -> str:
        return obj.last_error[:120]

    @admin.display(description="deliveries")
    def deliveries_link(self, obj: Subscription) -> str:
        url = reverse("admin:subscriptions_delivery_changelist") + f"?subscription__id__exact={obj.pk}"
        return format_html('<a href="{}">deliveries of this subscription</a>', url)

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

    @admin.action(description="Send a test event")
    def send_test_event(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        waiting = 0
        for subscription in queryset:
            service.send_test_event(subscription, _actor(request))
            waiting += subscription.status != Subscription.Status.ACTIVE
        message = f"Queued a test event for {queryset.count()} subscription(s)."
        if waiting:
            message += f" Not active, so waiting until resumed: {waiting}."
        self.message_user(request, message, messages.SUCCESS)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "subscription",
        "event_type",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "created_at",
        "delivered_at",
    )
    # No filter that needs a DISTINCT over the outbox: status is a choice, subscriptions a small table.
    list_filter = ("status", "subscription")
    list_select_related = ("subscription",)
    date_hierarchy = "created_at"
    search_fields = ("=id", "=fact__id", "entity_uri", "topic")
    ordering = ("-created_at",)
    show_full_result_count = False  # the outbox can be large; counting it on every page is not worth it
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "subscription",
                    "tenant",
                    "event_type",
                    "topic",
                    "fact",
                    "event",
                    "entity_uri",
                    "payload",
                    "created_at",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "claimed_until",
                    "delivered_at",
                )
            },
        ),
        ("Request", {"fields": ("request_preview",)}),
        ("Last response", {"fields": ("last_status_code", "last_response", "last_error")}),
    )
    readonly_fields = [f.name for f in Delivery._meta.fields] + ["request_preview"]
    actions = ["redeliver"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="request as it would be sent now")
    def request_preview(self, obj: Delivery) -> str:
        """Rendered by the engine's own function for the subscriber as it is now, so the operator
        sees what the receiver would get (or why it would get nothing). Signatures are made at send
        time from the secrets, which are never shown."""
        subscription = obj.subscription
        caller = delivery.subscriber_caller(subscription, timezone.now())
        if caller is None:
            return "Nothing would be sent: the subscriber has no active API key with read permission."
        body = delivery.render(obj, caller)
        if isinstance(body, str):
            return f"Nothing would be sent: {body}."
        if subscription.on_change == Subscription.OnChange.WAKE:
            head = f"wake line for {subscription.delivery_address}, carrying the fact or payload of:"
        else:
            head = (
                f"POST {subscription.delivery_address}\n"
                "Content-Type: application/json\n"
                f"webhook-id: {obj.id}\n"
                "webhook-timestamp, webhook-signature: computed when sent"
            )
        return format_html("<pre>{}\n\n{}</pre>", head, json.dumps(body, indent=2, ensure_ascii=False))

    @admin.action(description="Redeliver the selected failed or delivered events")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        selected = list(queryset.select_related("subscription"))
        requeued = sum(service.redeliver(row.subscription, str(row.id), _actor(request)) for row in selected)
        message = f"Queued {requeued} event(s) again."
        if skipped := len(selected) - requeued:
            message += f" {skipped} skipped: already queued or being delivered."
        self.message_user(request, message, messages.SUCCESS)
