"""Peers, their replication state, and the peer-token nonce store (WIRE.md §6)."""

from __future__ import annotations

import uuid

from django.db import models


class Peer(models.Model):
    """Another node this one has a federation agreement with (or is negotiating one with).

    A peer record is created two ways: the remote posted its declaration to us
    (``POST /v1/federation/peers``), or our operator connected to it (``federation connect``).
    Either way it waits in ``pending_approval`` until an operator approves its key fingerprint.
    """

    class Status(models.TextChoices):
        # The reference's statuses; suspended and revoked are ours.
        PENDING_VERIFICATION = "pending_verification"
        PENDING_APPROVAL = "pending_approval"
        REJECTED = "rejected"
        ACTIVE = "active"
        SUSPENDED = "suspended"
        REVOKED = "revoked"

    class Origin(models.TextChoices):
        DECLARED = "declared", "declared to us"
        CONNECTED = "connected", "connected by our operator"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The local tenant this agreement belongs to: served facts come from it, ingested facts go to it.
    tenant = models.CharField(max_length=64)
    node_id = models.CharField(max_length=255, unique=True)
    node_url = models.CharField(max_length=2048)
    federation_pubkey = models.CharField(max_length=64)
    # The agreed scopes, sorted: what we serve to this peer and accept from it.
    allowed_scopes = models.JSONField(default=list)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING_VERIFICATION)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.DECLARED)
    declaration_sig = models.CharField(max_length=128, blank=True, default="")
    signed_at = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the peer becomes active (the reference's `established_at`).
    established_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.CharField(max_length=512, blank=True, default="")
    status_changed_at = models.DateTimeField(null=True, blank=True)

    # --- pulling from this peer (ours, not part of the wire) ---
    fact_cursor = models.TextField(null=True, blank=True)
    tombstone_cursor = models.TextField(null=True, blank=True)
    # A worker holds the pull lease while it pulls; an expired lease may be taken over.
    pull_lease_owner = models.CharField(max_length=64, blank=True, default="")
    pull_lease_until = models.DateTimeField(null=True, blank=True)
    next_pull_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_pull_at = models.DateTimeField(null=True, blank=True)
    last_pull_outcome = models.CharField(max_length=32, blank=True, default="")
    last_pull_error = models.TextField(blank=True, default="")
    facts_ingested = models.BigIntegerField(default=0)
    facts_rejected = models.BigIntegerField(default=0)
    tombstones_ingested = models.BigIntegerField(default=0)
    # Timestamp of the newest fact ingested from this peer, and the lag it gave at the last pull.
    newest_ingested_at = models.DateTimeField(null=True, blank=True)
    lag_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "next_pull_at"], name="peer_due")]

    def __str__(self) -> str:
        return f"{self.node_id} ({self.status})"

    @property
    def peer_id(self) -> str:
        return str(self.id)


class PeerNonce(models.Model):
    """A peer-token nonce already used: each token is good for one request (WIRE.md §6.3).

    Rows are kept until the token they came from could no longer be accepted anyway, then pruned.
    """

    issuer = models.CharField(max_length=255)
    nonce = models.CharField(max_length=64)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "nonce"], name="peernonce_unique")]

    def __str__(self) -> str:
        return f"{self.issuer} {self.nonce}"
