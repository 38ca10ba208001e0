"""Decay policies (WIRE.md §7): how facts of a tenant age and when they expire."""

from __future__ import annotations

from django.db import models

from stigmem.limits import MAX_RELATION_LENGTH


class DecayPolicy(models.Model):
    """Matches facts by relation prefix and/or scope; at least one of the three rules is set.

    - ``ttl_seconds``: facts without ``valid_until`` older than this expire;
    - ``half_life_seconds``: ``effective_confidence = confidence x 0.5^(age / half_life)`` on reads;
    - ``min_confidence``: current facts whose effective confidence is below this floor expire.

    When several policies match a fact, the most specific one applies (docs/OPERATIONS.md).
    """

    tenant = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    # "" matches every relation; otherwise relations starting with it.
    relation_prefix = models.CharField(max_length=MAX_RELATION_LENGTH, blank=True, default="")
    # "" matches every scope; otherwise that one.
    scope = models.CharField(max_length=16, blank=True, default="")
    ttl_seconds = models.BigIntegerField(null=True, blank=True)
    half_life_seconds = models.BigIntegerField(null=True, blank=True)
    min_confidence = models.FloatField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_by = models.CharField(max_length=512, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "decay policies"
        constraints = [
            # Two policies with the same match would leave precedence to chance.
            models.UniqueConstraint(fields=["tenant", "relation_prefix", "scope"], name="decaypolicy_unique_match"),
        ]

    def __str__(self) -> str:
        return self.name


class SweepLock(models.Model):
    """The sweep lock of one tenant: at most one sweep per tenant runs at a time (decay/sweep.py).

    A lease, not a session lock, so it works the same on SQLite and PostgreSQL and does not
    outlive a crashed sweep for ever: the holder renews ``until`` with every chunk it commits,
    and a row whose ``until`` has passed may be taken over by the next sweep.
    """

    tenant = models.CharField(max_length=64, unique=True)
    owner = models.CharField(max_length=64)
    until = models.DateTimeField()
    acquired_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"sweep lock {self.tenant} ({self.owner} until {self.until:%Y-%m-%d %H:%M:%S})"
