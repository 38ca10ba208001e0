"""Subscriptions and their deliveries (WIRE.md §5, DESIGN.md §6).

A ``Delivery`` is an outbox row: written by dispatch in the same transaction that advances its
cursor over the fact and Event logs, then claimed and sent by delivery workers. Rows are kept
after delivery for the replay window.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from stigmem.limits import MAX_URI_LENGTH

MAX_ADDRESS_LENGTH = 2048
MAX_IDEMPOTENCY_KEY_LENGTH = 255


class Subscription(models.Model):
    class Kind(models.TextChoices):
        SCOPE = "scope"
        ENTITY = "entity"
        GARDEN = "garden"
        TOPICS = "topics"

    class OnChange(models.TextChoices):
        WEBHOOK = "webhook"
        WAKE = "wake"

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"
        DISABLED = "disabled"

    class Circuit(models.TextChoices):
        CLOSED = "closed"
        OPEN = "open"
        HALF_OPEN = "half_open"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.CharField(max_length=64)
    subscriber_identity = models.CharField(max_length=MAX_URI_LENGTH)
    # As sent (scope name, entity URI or garden URI); "" for topic subscriptions without one.
    target = models.CharField(max_length=MAX_URI_LENGTH, blank=True, default="")
    target_kind = models.CharField(max_length=8, choices=Kind.choices)
    # Normalized matching keys: the entity URI for entity targets, the garden id for gardens.
    match_key = models.CharField(max_length=MAX_URI_LENGTH, blank=True, default="")
    topics = models.JSONField(default=list, blank=True)
    on_change = models.CharField(max_length=8, choices=OnChange.choices)
    delivery_address = models.CharField(max_length=MAX_ADDRESS_LENGTH)
    idempotency_key = models.CharField(max_length=MAX_IDEMPOTENCY_KEY_LENGTH, blank=True, default="")
    # SHA-256 of (target, on_change, delivery_address, topics), set by the create service: the
    # unique constraint below makes concurrent duplicate creates collide instead of racing.
    # Rows made without the service leave it empty and are not constrained.
    dedup_key = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField()
    last_delivered_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    # Signing: the current secret, and during a rotation the previous one until it expires.
    signing_secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # Circuit breaker (WIRE.md §5.4).
    circuit = models.CharField(max_length=9, choices=Circuit.choices, default=Circuit.CLOSED)
    circuit_retry_at = models.DateTimeField(null=True, blank=True)
    circuit_cooldown_s = models.IntegerField(default=0)
    consecutive_failures = models.IntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "subscriber_identity", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="subscription_unique_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["tenant", "subscriber_identity", "dedup_key"],
                condition=~Q(dedup_key=""),
                name="subscription_unique_dedup_key",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "target_kind", "match_key"], name="subscription_match"),
            models.Index(fields=["tenant", "subscriber_identity"], name="subscription_owner"),
        ]

    def __str__(self) -> str:
        return f"{self.subscriber_identity} -> {self.delivery_address} ({self.target_kind})"


class Delivery(models.Model):
    """One event for one subscription. Its id is the event id the receiver sees (webhook-id)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERING = "delivering"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="deliveries")
    tenant = models.CharField(max_length=64)
    event_type = models.CharField(max_length=64)  # "fact_asserted" or the node event's topic type
    topic = models.CharField(max_length=255)
    fact = models.ForeignKey("stigmem.Fact", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    event = models.ForeignKey("stigmem.Event", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    entity_uri = models.CharField(max_length=MAX_URI_LENGTH, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # A claim is a lease: a worker that dies mid-delivery loses it when it expires.
    claimed_until = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_status_code = models.IntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True, default="")

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            # One delivery per (subscription, fact) and per (subscription, node event).
            models.UniqueConstraint(
                fields=["subscription", "fact"], condition=Q(fact__isnull=False), name="delivery_once_per_fact"
            ),
            models.UniqueConstraint(
                fields=["subscription", "event"], condition=Q(event__isnull=False), name="delivery_once_per_event"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due"),
            models.Index(fields=["subscription", "created_at"], name="delivery_by_subscription"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.event_type} -> {self.subscription_id} ({self.status})"
