"""Serializers that describe the wire shapes in the OpenAPI document.

Validation itself lives in the domain modules (``stigmem.fact_input`` and friends) so that the
API, batch ingestion and federation apply the same rules; these classes only document.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from stigmem.limits import MAX_RELATION_LENGTH, MAX_STRING_BYTES, MAX_URI_LENGTH, QUERY_LIMIT_MAX
from stigmem.models import PERMISSIONS

SCOPE_CHOICES = ["local", "team", "company", "public"]


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "stigmem.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}


class ValueSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["string", "text", "number", "boolean", "datetime", "ref", "null"])
    v = serializers.JSONField(required=False, allow_null=True)
    interpret_as = serializers.ChoiceField(choices=["content", "instruction"], required=False)


class ValueScheme(OpenApiSerializerExtension):
    """A typed value (WIRE.md §2.2): the JSON type of ``v`` depends on ``type``, so one variant per type.

    Enums are wrapped in ``allOf`` so that drf-spectacular's enum post-processing leaves them inline.
    """

    target_class = ValueSerializer

    def map_serializer(self, auto_schema, direction):
        v_schemas = {
            "string": {"type": "string"},
            "text": {"type": "string"},
            "number": {"type": "number"},
            "boolean": {"type": "boolean"},
            # Any ISO-8601 string is accepted, and echoed back as sent.
            "datetime": {"type": "string", "format": "date-time"} if direction == "request" else {"type": "string"},
            "ref": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$", "maxLength": MAX_STRING_BYTES},
            "null": {"nullable": True, "allOf": [{"enum": [None]}]},
        }
        interpret_as = {"allOf": [{"type": "string", "enum": ["content", "instruction"]}]}
        variants = []
        for name, v_schema in v_schemas.items():
            # Requests may omit `interpret_as` (content) and a null `v`; responses always carry both.
            if direction == "request":
                required = ["type"] if name == "null" else ["type", "v"]
            else:
                required = ["type", "v", "interpret_as"]
            properties = {
                "type": {"allOf": [{"type": "string", "enum": [name]}]},
                "v": v_schema,
                "interpret_as": interpret_as,
            }
            variants.append({"type": "object", "properties": properties, "required": required})
        return {"oneOf": variants}


class DerivedFromSerializer(serializers.Serializer):
    fact_id = serializers.CharField(required=False)
    hash = serializers.CharField(required=False)


class AssertSerializer(serializers.Serializer):
    entity = serializers.CharField(max_length=MAX_URI_LENGTH)
    relation = serializers.CharField(max_length=MAX_RELATION_LENGTH)
    value = ValueSerializer()
    source = serializers.CharField(max_length=MAX_URI_LENGTH)
    confidence = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    scope = serializers.ChoiceField(choices=SCOPE_CHOICES, required=False)
    valid_until = serializers.DateTimeField(required=False, allow_null=True)
    garden_id = serializers.RegexField(r"^stigmem://[^/\s]+/garden/[^/\s]+$", required=False, allow_null=True)
    derived_from = DerivedFromSerializer(many=True, required=False)


class FactRecordSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    entity = serializers.CharField()
    relation = serializers.CharField()
    value = ValueSerializer()
    source = serializers.CharField()
    timestamp = serializers.DateTimeField()
    hlc = serializers.CharField()
    received_from = serializers.CharField(allow_null=True)
    valid_until = serializers.CharField(allow_null=True)
    confidence = serializers.FloatField()
    scope = serializers.CharField()
    origin_node_id = serializers.CharField(allow_null=True)
    origin_allowed_scopes = serializers.ListField(child=serializers.CharField(), allow_null=True)
    garden_id = serializers.CharField(allow_null=True)
    attested = serializers.BooleanField(allow_null=True)
    attested_key_id = serializers.CharField(allow_null=True)
    contradicted = serializers.BooleanField()
    warnings = serializers.ListField(child=serializers.CharField())
    source_trust = serializers.FloatField(allow_null=True)
    effective_confidence = serializers.FloatField(allow_null=True)
    quarantine_status = serializers.CharField(allow_null=True)
    quarantine_garden_id = serializers.CharField(allow_null=True)
    sanitizer_warnings = serializers.ListField(child=serializers.CharField())
    sanitizer_redacted = serializers.BooleanField()
    cid = serializers.CharField()
    derived_from = DerivedFromSerializer(many=True)
    expired = serializers.BooleanField()


class TombstoneNoticeSerializer(serializers.Serializer):
    entity_uri = serializers.CharField()
    tombstone_id = serializers.CharField()
    legal_hold = serializers.BooleanField()
    tombstone_created_at = serializers.CharField()


class FactPageSerializer(serializers.Serializer):
    facts = FactRecordSerializer(many=True)
    total = serializers.IntegerField(allow_null=True)
    cursor = serializers.CharField(allow_null=True)
    tombstone_notices = TombstoneNoticeSerializer(many=True)


class BatchSerializer(serializers.Serializer):
    facts = AssertSerializer(many=True)
    atomic = serializers.BooleanField(required=False)


class BatchResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.IntegerField()
    fact = FactRecordSerializer(allow_null=True)
    error = serializers.DictField(allow_null=True)


class BatchResponseSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = BatchResultSerializer(many=True)


class VerifyCidSerializer(serializers.Serializer):
    cid_valid = serializers.BooleanField()
    computed_cid = serializers.CharField()
    stored_cid = serializers.CharField(allow_null=True)
    mismatch_reason = serializers.CharField(allow_null=True)


class ConflictSerializer(serializers.Serializer):
    conflict_id = serializers.CharField()
    fact_a = FactRecordSerializer(allow_null=True)
    fact_b = FactRecordSerializer(allow_null=True)
    status = serializers.ChoiceField(choices=["unresolved", "resolved"])
    resolved_by = serializers.CharField(allow_null=True)
    detected_at = serializers.DateTimeField()


class ConflictPageSerializer(serializers.Serializer):
    conflicts = ConflictSerializer(many=True)
    cursor = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class ResolveSerializer(serializers.Serializer):
    winning_fact_id = serializers.CharField(required=False)
    new_value = ValueSerializer(required=False)
    resolution_note = serializers.CharField(required=False, allow_blank=True)


class ResolvedSerializer(serializers.Serializer):
    resolution_fact_id = serializers.UUIDField()
    conflict_status = serializers.CharField()


class KeyCreateSerializer(serializers.Serializer):
    raw_key = serializers.CharField(required=False, min_length=32, max_length=512)
    entity_uri = serializers.CharField(max_length=512)
    permissions = serializers.ListField(child=serializers.ChoiceField(choices=PERMISSIONS), min_length=1)
    description = serializers.CharField(required=False, allow_blank=True, max_length=500)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    tenant_id = serializers.CharField(required=False)


class KeySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    entity_uri = serializers.CharField()
    permissions = serializers.ListField(child=serializers.CharField())
    description = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    tenant_id = serializers.CharField()
    oidc_sub = serializers.CharField(allow_null=True)
    api_key = serializers.CharField(required=False)


class MeSerializer(serializers.Serializer):
    entity_uri = serializers.CharField()
    permissions = serializers.ListField(child=serializers.CharField())
    tenant_id = serializers.CharField()


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField()
    db = serializers.CharField()
    worker_heartbeat_age_s = serializers.FloatField(allow_null=True)


class WellKnownSerializer(serializers.Serializer):
    version = serializers.CharField()
    node_id = serializers.CharField()
    node_url = serializers.CharField()
    auth = serializers.ChoiceField(choices=["required", "none"])
    federation = serializers.ChoiceField(choices=["enabled", "disabled"])
    source_attestation = serializers.CharField()
    namespaces = serializers.ListField(child=serializers.CharField())
    spec = serializers.CharField()
    cors = serializers.DictField()
    federation_pubkey = serializers.CharField(required=False, help_text="present when federation is enabled")
    federation_version = serializers.CharField(required=False)
    federation_endpoints = serializers.DictField(required=False)


class ValidationItemSerializer(serializers.Serializer):
    loc = serializers.ListField(child=serializers.JSONField())
    msg = serializers.CharField()
    type = serializers.CharField()


class ValidationErrorSerializer(serializers.Serializer):
    detail = ValidationItemSerializer(many=True)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.JSONField()


class RateLimitedSerializer(serializers.Serializer):
    detail = serializers.CharField()
    retry_after = serializers.IntegerField()


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """The documented error responses of an endpoint (401 and 429 apply to every one)."""
    documented: dict[int, OpenApiResponse] = {
        401: OpenApiResponse(ErrorSerializer, description="missing or invalid API key"),
        429: OpenApiResponse(RateLimitedSerializer, description="rate limit exceeded"),
    }
    for status in statuses:
        if status == 422:
            documented[422] = OpenApiResponse(ValidationErrorSerializer, description="validation failed")
        else:
            documented[status] = OpenApiResponse(ErrorSerializer)
    return documented


FACT_QUERY_PARAMETERS = [
    OpenApiParameter("entity", str),
    OpenApiParameter("relation", str),
    OpenApiParameter("source", str),
    OpenApiParameter("scope", str, enum=SCOPE_CHOICES),
    OpenApiParameter("min_confidence", {"type": "number", "minimum": 0, "maximum": 1}),
    OpenApiParameter("include_contradicted", bool),
    OpenApiParameter("include_expired", bool),
    OpenApiParameter("after", str, description="ISO-8601 datetime"),
    OpenApiParameter("cursor", str),
    OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": QUERY_LIMIT_MAX}),
    OpenApiParameter("garden_id", str),
]


class AuditEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    event_type = serializers.CharField()
    actor = serializers.CharField(allow_blank=True)
    target = serializers.CharField(allow_blank=True)
    detail = serializers.DictField()
    tenant_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    entity_uri = serializers.CharField(allow_blank=True, help_text="the reference node's name for `actor`")
    ts = serializers.DateTimeField(help_text="the reference node's name for `created_at`")


class AuditPageSerializer(serializers.Serializer):
    entries = AuditEntrySerializer(many=True)
    cursor = serializers.CharField(allow_null=True)
    next_cursor = serializers.CharField(allow_null=True, help_text="the reference node's name for `cursor`")
    total = serializers.IntegerField(help_text="entries on this page (the reference's meaning)")


AUDIT_QUERY_PARAMETERS = [
    OpenApiParameter("since", str, description="ISO-8601 datetime; entries created at or after it"),
    OpenApiParameter("until", str, description="ISO-8601 datetime; entries created at or before it"),
    OpenApiParameter("event_type", str),
    OpenApiParameter("principal", str, description="exact actor"),
    OpenApiParameter("cursor", str),
    OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": QUERY_LIMIT_MAX}),
]
