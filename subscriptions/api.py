"""Subscription endpoints (WIRE.md §5.1); the rules live in ``subscriptions.service``.

Every route needs only the ``read`` permission, like the reference: a subscription is the
caller's own resource, and it only ever receives what the caller may read.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.limits import MAX_URI_LENGTH
from subscriptions import service
from subscriptions.models import MAX_ADDRESS_LENGTH, MAX_IDEMPOTENCY_KEY_LENGTH, Delivery, Subscription

_READ = {"GET": "read", "POST": "read", "DELETE": "read"}


class SubscriptionCreateSerializer(serializers.Serializer):
    target = serializers.CharField(
        max_length=MAX_URI_LENGTH,
        required=False,
        allow_null=True,
        help_text="a scope name, an entity URI or a garden URI; optional when `topics` is given (then only a label)",
    )
    on_change = serializers.ChoiceField(choices=Subscription.OnChange.values)
    delivery_address = serializers.CharField(
        max_length=MAX_ADDRESS_LENGTH, help_text="an http(s) URL with a public address (webhook), or an identity (wake)"
    )
    idempotency_key = serializers.CharField(max_length=MAX_IDEMPOTENCY_KEY_LENGTH, required=False, allow_null=True)
    topics = serializers.ListField(
        child=serializers.CharField(max_length=255),
        min_length=1,
        max_length=service.MAX_TOPICS,
        required=False,
        allow_null=True,
        help_text="node event topic patterns (`*` one token, `>` trailing tokens)",
    )


class SubscriptionSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    subscriber_identity = serializers.CharField()
    target = serializers.CharField(allow_null=True)
    target_kind = serializers.ChoiceField(choices=Subscription.Kind.values)
    on_change = serializers.ChoiceField(choices=Subscription.OnChange.values)
    delivery_address = serializers.CharField()
    idempotency_key = serializers.CharField(allow_null=True)
    topics = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    last_delivered_at = serializers.DateTimeField(allow_null=True)
    circuit_open = serializers.BooleanField()
    consecutive_failures = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Subscription.Status.values)


class CreatedSubscriptionSerializer(SubscriptionSerializer):
    signing_secret = serializers.CharField(help_text="`whsec_` + base64 of 32 bytes (Standard Webhooks)")


class SubscriptionListSerializer(serializers.Serializer):
    subscriptions = SubscriptionSerializer(many=True)
    total = serializers.IntegerField()


class SecretSerializer(serializers.Serializer):
    signing_secret = serializers.CharField()


class EventSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="the event id receivers see as `webhook-id`")
    subscription_id = serializers.UUIDField()
    event_type = serializers.CharField()
    entity_uri = serializers.CharField(allow_null=True)
    fact_id = serializers.UUIDField(allow_null=True)
    payload = serializers.DictField()
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    delivery_status = serializers.ChoiceField(choices=Delivery.Status.values)
    delivery_attempts = serializers.IntegerField()
    last_error = serializers.CharField(allow_null=True)


class EventPageSerializer(serializers.Serializer):
    events = EventSerializer(many=True)
    total = serializers.IntegerField(help_text="events on this page (the reference's meaning)")
    cursor = serializers.CharField(allow_null=True)


class RecoverSerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, allow_null=True, help_text="omit to recover every failed event")


class RequeuedSerializer(serializers.Serializer):
    requeued = serializers.IntegerField(help_text="events queued again")


ID_PARAMETER = OpenApiParameter("subscription_id", str, OpenApiParameter.PATH)
EVENT_PARAMETERS = [ID_PARAMETER, OpenApiParameter("event_id", str, OpenApiParameter.PATH)]
EVENT_QUERY_PARAMETERS = [
    ID_PARAMETER,
    OpenApiParameter("since", str, description="ISO-8601 datetime; never earlier than the replay window"),
    OpenApiParameter("cursor", str),
    OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": service.EVENTS_LIMIT_MAX}),
]


class SubscriptionsView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="create_subscription",
        description=(
            "Subscribe the caller to a scope, an entity, a garden (members only) or node event topics. "
            "An identical subscription, or one with the same idempotency key, is returned as is (201)."
        ),
        request=SubscriptionCreateSerializer,
        responses={201: CreatedSubscriptionSerializer, **schemas.errors(400, 403, 404, 422)},
    )
    def post(self, request: Request) -> Response:
        subscription, _ = service.create_subscription(self.caller, request.data)
        return Response(service.subscription_record(subscription, with_secret=True), status=201)

    @extend_schema(
        operation_id="list_subscriptions",
        description="The caller's own subscriptions, newest first.",
        responses={200: SubscriptionListSerializer, **schemas.errors(403)},
    )
    def get(self, request: Request) -> Response:
        records = [service.subscription_record(s) for s in service.subscriptions_of(self.caller)]
        return Response({"subscriptions": records, "total": len(records)})


class SubscriptionDetailView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="get_subscription",
        parameters=[ID_PARAMETER],
        responses={200: SubscriptionSerializer, **schemas.errors(403, 404)},
    )
    def get(self, request: Request, subscription_id: str) -> Response:
        return Response(service.subscription_record(service.owned_subscription(self.caller, subscription_id)))

    @extend_schema(
        operation_id="delete_subscription",
        parameters=[ID_PARAMETER],
        description="Delete the subscription and its event history.",
        responses={204: None, **schemas.errors(403, 404)},
    )
    def delete(self, request: Request, subscription_id: str) -> Response:
        service.delete_subscription(self.caller, subscription_id)
        return Response(status=204)


class RotateSecretView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="rotate_subscription_secret",
        parameters=[ID_PARAMETER],
        description="A new signing secret; the previous one keeps signing alongside it for 24 hours.",
        request=None,
        responses={200: SecretSerializer, **schemas.errors(403, 404)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        subscription = service.owned_subscription(self.caller, subscription_id)
        return Response({"signing_secret": service.rotate_secret(subscription, self.caller.entity_uri)})


class PauseView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="pause_subscription",
        parameters=[ID_PARAMETER],
        description="Stop deliveries; events keep queueing until the subscription is resumed.",
        request=None,
        responses={200: SubscriptionSerializer, **schemas.errors(403, 404)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        subscription = service.owned_subscription(self.caller, subscription_id)
        return Response(service.subscription_record(service.pause(subscription, self.caller.entity_uri)))


class ResumeView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="resume_subscription",
        parameters=[ID_PARAMETER],
        description="Deliver again; a disabled subscription is re-activated with its failure count and circuit reset.",
        request=None,
        responses={200: SubscriptionSerializer, **schemas.errors(403, 404)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        subscription = service.owned_subscription(self.caller, subscription_id)
        return Response(service.subscription_record(service.resume(subscription, self.caller.entity_uri)))


class EventsView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="list_subscription_events",
        parameters=EVENT_QUERY_PARAMETERS,
        description=(
            "The subscription's events within the replay window, oldest first. Fact events the caller "
            "can no longer see are shown as `{fact_id, redacted: true}`."
        ),
        responses={200: EventPageSerializer, **schemas.errors(400, 403, 404, 422)},
    )
    def get(self, request: Request, subscription_id: str) -> Response:
        subscription = service.owned_subscription(self.caller, subscription_id)
        page = service.list_events(self.caller, subscription, service.parse_event_query(request.query_params))
        return Response({"events": page.events, "total": len(page.events), "cursor": page.cursor})


class RedeliverView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="redeliver_subscription_event",
        parameters=EVENT_PARAMETERS,
        description="Queue a failed or delivered event again, with its original event id (0 if already queued).",
        request=None,
        responses={200: RequeuedSerializer, **schemas.errors(403, 404)},
    )
    def post(self, request: Request, subscription_id: str, event_id: str) -> Response:
        subscription = service.owned_subscription(self.caller, subscription_id)
        return Response({"requeued": service.redeliver(subscription, event_id, self.caller.entity_uri)})


class RecoverView(NodeView):
    permission_by_method = _READ

    @extend_schema(
        operation_id="recover_subscription_events",
        parameters=[ID_PARAMETER],
        description="Queue again every failed (dead-lettered) event created at or after `since`.",
        request=RecoverSerializer,
        responses={200: RequeuedSerializer, **schemas.errors(403, 404, 422)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        since = service.parse_recover_body(request.data)
        subscription = service.owned_subscription(self.caller, subscription_id)
        return Response({"requeued": service.recover(subscription, since, self.caller.entity_uri)})
