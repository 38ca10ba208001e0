"""Node-wide singletons: identity and the clock every write goes through."""

from __future__ import annotations

from django.db import models


class NodeIdentity(models.Model):
    """Who this node is. One row (pk=1), created by ``runnode`` / first use; never changes."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    node_id = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The node's Ed25519 private key (raw 32 bytes, base64url) when not given by
    # STIGMEM_NODE_SIGNING_KEY: generated once, shared by every process through the database.
    signing_key = models.CharField(max_length=64, blank=True, default="")
    # Set by a scheduled task on the qcluster: /healthz shows how long ago workers last ran.
    worker_heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "node identity"
        verbose_name_plural = "node identity"

    def __str__(self) -> str:
        return self.node_id


class NodeClock(models.Model):
    """The single row that orders every write of the node (DESIGN.md §3).

    Writers lock it for the length of their transaction, so ``seq`` values become visible in
    commit order and the hybrid logical clock never goes backwards, across processes and
    restarts.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    last_fact_seq = models.BigIntegerField(default=0)
    last_event_seq = models.BigIntegerField(default=0)
    hlc_wall_ms = models.BigIntegerField(default=0)
    hlc_counter = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"fact seq {self.last_fact_seq}, event seq {self.last_event_seq}"
