"""The node Event log and the durable cursors of the consumers that tail the logs."""

from __future__ import annotations

from django.db import models


class Event(models.Model):
    """A node event that is not a fact (conflict, expiry, tombstone, rule change, ...).

    ``seq`` is assigned through the NodeClock in commit order, like ``Fact.seq``.
    """

    seq = models.BigIntegerField(primary_key=True)
    tenant = models.CharField(max_length=64)
    topic = models.CharField(max_length=255)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["tenant", "seq"], name="event_tenant_seq")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.topic}"


class ConsumerCursor(models.Model):
    """How far one consumer has read one log. Advanced in the consumer's own transaction."""

    class Log(models.TextChoices):
        FACTS = "facts"
        EVENTS = "events"

    consumer = models.CharField(max_length=100)
    log = models.CharField(max_length=8, choices=Log.choices)
    position = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consumer", "log"], name="cursor_unique_consumer_log")]

    def __str__(self) -> str:
        return f"{self.consumer}@{self.log}={self.position}"
