"""The rule store (WIRE.md §8.1, §8.2): rule definitions loaded from the rules directory, operator
states, their history, and the revision counter the engine's caches follow.

Rules are node-wide, not per tenant. The rules directory (``STIGMEM_TTP_RULES_DIR``) is node
configuration, like the sanitizer's pattern file: whoever operates the node decides what it
classifies, and every tenant's facts are evaluated by the same rules. States are node-wide for the
same reason: disabling a noisy rule is an operator decision about the node. Consequently the audit
rows and node events of state changes go to ``STIGMEM_DEFAULT_TENANT`` (the operator's tenant).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from stigmem.limits import MAX_URI_LENGTH
from ttprules.schema import MAX_NAME_LENGTH, MAX_RULE_ID_LENGTH

MAX_FILE_NAME_LENGTH = 255  # a file name on every common file system
MAX_ACTOR_LENGTH = 512


class Rule(models.Model):
    """One rule file of the rules directory, as last synced (``ttprules.store.sync_directory``).

    A file that fails validation is stored too (``valid`` false, with its line-numbered ``errors``)
    so operators see it in the list; the engine evaluates valid rules only. A file that disappears
    from the directory takes its row with it; its ``RuleState`` stays (see there).
    """

    rule_id = models.CharField(max_length=MAX_RULE_ID_LENGTH, unique=True)
    file_name = models.CharField(max_length=MAX_FILE_NAME_LENGTH)
    content_sha256 = models.CharField(max_length=64)
    # Hash of the validator and ATT&CK catalogue that produced valid/errors/warnings/parsed: after an
    # upgrade that changes either, unchanged files are validated again instead of trusted.
    parser_sha256 = models.CharField(max_length=64)
    source = models.TextField()
    valid = models.BooleanField()
    errors = models.JSONField(default=list)  # ["line N: message", ...]
    warnings = models.JSONField(default=list)
    rule_version = models.IntegerField(null=True)  # null when invalid
    name = models.CharField(max_length=MAX_NAME_LENGTH, blank=True, default="")  # "" when invalid
    # What the engine and the API need without parsing the YAML again: description, applies_to,
    # emits, evidence_fields (the match tree is compiled from ``source``). Null when invalid.
    parsed = models.JSONField(null=True)
    loaded_at = models.DateTimeField()  # first seen
    updated_at = models.DateTimeField()  # last change of the definition (content, file name, validity)

    class Meta:
        ordering = ["rule_id"]

    def __str__(self) -> str:
        return self.rule_id


class RuleState(models.Model):
    """The operator's state of a rule; no row (or ``enabled``) means enabled.

    Keyed by rule id, not by a foreign key to ``Rule``: a rule disabled by an operator stays
    disabled while its file is briefly gone (a deploy replacing the directory, a rename back and
    forth) and applies again when the file comes back.
    """

    class State(models.TextChoices):
        ENABLED = "enabled"
        DISABLED = "disabled"
        CLIPPED = "clipped"  # fires with confidence at most confidence_max
        SHADOW = "shadow"  # evaluates and counts would-be tags, emits nothing

    rule_id = models.CharField(max_length=MAX_RULE_ID_LENGTH, unique=True)
    state = models.CharField(max_length=16, choices=State.choices)
    confidence_max = models.FloatField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    set_by = models.CharField(max_length=MAX_ACTOR_LENGTH)
    set_at = models.DateTimeField()
    reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["rule_id"]
        indexes = [models.Index(fields=["expires_at"], name="ttprulestate_expires_at")]
        constraints = [
            # The service validates the same; the constraint keeps any other writer honest.
            models.CheckConstraint(
                condition=Q(state="clipped", confidence_max__gt=0, confidence_max__lte=1)
                | (Q(state__in=["enabled", "disabled", "shadow"]) & Q(confidence_max__isnull=True)),
                name="ttprulestate_confidence_max_iff_clipped",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.state}"


class RuleStateChange(models.Model):
    """History: one row per state change, by an operator or by expiry (WIRE.md §8.2)."""

    class Cause(models.TextChoices):
        OPERATOR = "operator"
        EXPIRY = "expiry"

    rule_id = models.CharField(max_length=MAX_RULE_ID_LENGTH)
    from_state = models.CharField(max_length=16, choices=RuleState.State.choices)
    to_state = models.CharField(max_length=16, choices=RuleState.State.choices)
    confidence_max = models.FloatField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    set_by = models.CharField(max_length=MAX_ACTOR_LENGTH)
    set_at = models.DateTimeField()
    reason = models.TextField(blank=True, default="")
    cause = models.CharField(max_length=16, choices=Cause.choices)

    class Meta:
        indexes = [models.Index(fields=["rule_id", "id"], name="ttprulestatechange_rule")]

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.from_state} -> {self.to_state}"


class RuleRevision(models.Model):
    """A single row (id 1) whose ``revision`` grows with every definition or state change.

    Bumped in the transaction of the change, so a process that sees a new revision also sees the
    change; per-process caches rebuild when it moves (``ttprules.store.RuleIndexCache``). Its row
    lock also serializes rule changes across processes.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    revision = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="ttprulerevision_single_row")]

    def __str__(self) -> str:
        return f"rule revision {self.revision}"


class Tag(models.Model):
    """One ATT&CK technique a rule found in a fact (WIRE.md §8.3), written by the engine.

    The id is deterministic (``ttprules.engine.tag_id``): evaluating a fact again — a backfill, a
    crash replay — finds the tag already there and writes and announces nothing. Tags belong to the
    tagged fact's tenant and are visible to exactly those who can see that fact.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    tenant = models.CharField(max_length=64)
    fact = models.ForeignKey("stigmem.Fact", on_delete=models.CASCADE, related_name="ttp_tags")
    entity = models.CharField(max_length=MAX_URI_LENGTH)
    rule_id = models.CharField(max_length=MAX_RULE_ID_LENGTH)
    rule_version = models.IntegerField()
    tactic = models.CharField(max_length=16)
    technique_id = models.CharField(max_length=16)
    sub_technique_id = models.CharField(max_length=16, null=True, blank=True)
    confidence = models.FloatField()
    evidence = models.JSONField(default=dict)
    attack_version = models.CharField(max_length=16)
    # The ``ttp:technique`` fact written for this tag (several tags of one entity can share it).
    tag_fact = models.ForeignKey("stigmem.Fact", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "created_at", "id"], name="ttptag_tenant_created"),
            models.Index(fields=["tenant", "technique_id", "created_at"], name="ttptag_technique"),
            models.Index(fields=["tenant", "sub_technique_id", "created_at"], name="ttptag_sub_technique"),
            models.Index(fields=["tenant", "entity", "created_at"], name="ttptag_entity"),
            models.Index(fields=["tenant", "rule_id", "created_at"], name="ttptag_rule"),
        ]

    def __str__(self) -> str:
        return f"{self.entity}: {self.sub_technique_id or self.technique_id} ({self.rule_id})"


class RuleStats(models.Model):
    """Per-rule counters of the engine, node-wide, updated in the engine's batch transactions.

    ``matched`` counts facts the rule matched; ``tags`` the new tags it wrote; ``shadow_tags`` the
    tags it would have written in ``shadow`` state; ``dropped`` tags under the confidence floor
    (0.3, after clipping); ``errors`` evaluations that raised (the fact still counts as evaluated by
    the other rules, and the engine's cursor moves on).
    """

    rule_id = models.CharField(max_length=MAX_RULE_ID_LENGTH, unique=True)
    matched = models.BigIntegerField(default=0)
    tags = models.BigIntegerField(default=0)
    shadow_tags = models.BigIntegerField(default=0)
    dropped = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    last_matched_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["rule_id"]
        verbose_name_plural = "rule stats"

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.tags} tags"
