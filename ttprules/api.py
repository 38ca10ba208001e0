"""TTP rule endpoints (WIRE.md §8.4); the rules live in ``ttprules.service`` and ``ttprules.store``.

Rules and states are node-wide: listing and reading them needs ``read`` (of any tenant); changing a
state and validating a rule document need ``admin``. Tags and the Navigator layer are the caller's
tenant's tags whose tagged fact the caller can see.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from stigmem.api import schemas
from stigmem.api.base import NodeView
from stigmem.limits import QUERY_LIMIT_MAX
from ttprules import engine, service
from ttprules.models import RuleState, RuleStateChange
from ttprules.store import MAX_REASON_LENGTH

STATES = RuleState.State.values


class EmitSerializer(serializers.Serializer):
    tactic = serializers.CharField()
    technique_id = serializers.CharField()
    sub_technique_id = serializers.CharField(allow_null=True)
    confidence = serializers.FloatField()


class RuleStateSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=STATES)
    confidence_max = serializers.FloatField(allow_null=True, help_text="clipped only")
    expires_at = serializers.DateTimeField(allow_null=True, help_text="when the state reverts to enabled")
    set_by = serializers.CharField(allow_null=True, help_text="null: never set (enabled by default)")
    set_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField(allow_null=True, allow_blank=True)


class RuleStatsSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text="facts the rule matched")
    tags = serializers.IntegerField(help_text="new tags written")
    shadow_tags = serializers.IntegerField(help_text="tags it would have written in the shadow state")
    dropped = serializers.IntegerField(help_text="tags under the confidence floor")
    errors = serializers.IntegerField(help_text="evaluations that raised")
    last_matched_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_null=True)


class RuleSerializer(serializers.Serializer):
    rule_id = serializers.CharField()
    rule_version = serializers.IntegerField(allow_null=True, help_text="null when the rule file is invalid")
    name = serializers.CharField(allow_null=True, help_text="null when the rule file is invalid")
    description = serializers.CharField(allow_null=True, allow_blank=True)
    file_name = serializers.CharField()
    valid = serializers.BooleanField()
    errors = serializers.ListField(child=serializers.CharField(), help_text='"line N: message"')
    warnings = serializers.ListField(child=serializers.CharField())
    applies_to = serializers.ListField(child=serializers.CharField(), allow_null=True)
    emits = EmitSerializer(many=True, allow_null=True)
    evidence_fields = serializers.ListField(child=serializers.CharField(), allow_null=True)
    content_sha256 = serializers.CharField()
    loaded_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    state = RuleStateSerializer()
    stats = RuleStatsSerializer()


class RuleListSerializer(serializers.Serializer):
    rules = RuleSerializer(many=True, help_text="by rule_id")
    total = serializers.IntegerField()


class StateChangeSerializer(serializers.Serializer):
    from_state = serializers.ChoiceField(choices=STATES)
    to_state = serializers.ChoiceField(choices=STATES)
    confidence_max = serializers.FloatField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    set_by = serializers.CharField()
    set_at = serializers.DateTimeField()
    reason = serializers.CharField(allow_blank=True)
    cause = serializers.ChoiceField(choices=RuleStateChange.Cause.values)


class RuleDetailSerializer(RuleSerializer):
    source = serializers.CharField(allow_blank=True, help_text="the rule file's YAML")
    history = StateChangeSerializer(many=True, help_text=f"the last {service.HISTORY_LIMIT} changes, newest first")


class StateInputSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=STATES)
    confidence_max = serializers.FloatField(
        required=False, allow_null=True, min_value=0.0, max_value=1.0, help_text="required for clipped, (0, 1]"
    )
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="ISO-8601, in the future (UTC when without offset)"
    )
    reason = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=MAX_REASON_LENGTH)


class ValidateInputSerializer(serializers.Serializer):
    yaml = serializers.CharField(help_text=f"the rule document, at most {service.MAX_VALIDATE_BYTES // 1024} KiB")
    filename = serializers.CharField(
        required=False, allow_null=True, help_text="default: <rule_id>.yaml, the rule_id read from the document"
    )
    facts = schemas.AssertSerializer(
        many=True,
        required=False,
        allow_null=True,
        max_length=service.MAX_SAMPLE_FACTS,
        help_text="sample facts, read like POST /v1/facts bodies; other fields are ignored",
    )


class SampleResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    applies = serializers.BooleanField(
        help_text="the engine would evaluate the rule on this fact: its relation is in applies_to, and it is "
        "neither a retraction nor sourced from a rule"
    )
    matched = serializers.BooleanField()
    tags = EmitSerializer(many=True, help_text="the tags it would emit (under the confidence floor: dropped)")
    evidence = serializers.DictField(allow_null=True, help_text="null when not matched")


class ValidateResultSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    errors = serializers.ListField(child=serializers.CharField(), help_text='"line N: message"')
    warnings = serializers.ListField(child=serializers.CharField())
    results = SampleResultSerializer(many=True, allow_null=True, help_text="null when the document is invalid")


class TagSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    fact_id = serializers.UUIDField()
    entity = serializers.CharField()
    rule_id = serializers.CharField()
    rule_version = serializers.IntegerField()
    tactic = serializers.CharField()
    technique_id = serializers.CharField()
    sub_technique_id = serializers.CharField(allow_null=True)
    confidence = serializers.FloatField()
    evidence = serializers.DictField()
    attack_version = serializers.CharField()
    created_at = serializers.DateTimeField()


class TagPageSerializer(serializers.Serializer):
    tags = TagSerializer(many=True, help_text="newest first")
    cursor = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class LayerVersionsSerializer(serializers.Serializer):
    attack = serializers.CharField()
    navigator = serializers.CharField()
    layer = serializers.CharField()


class LayerLayoutSerializer(serializers.Serializer):
    layout = serializers.CharField()
    aggregateFunction = serializers.CharField()
    showID = serializers.BooleanField()
    showName = serializers.BooleanField()
    showAggregateScores = serializers.BooleanField()
    countUnscored = serializers.BooleanField()
    expandedSubtechniques = serializers.CharField()


class LayerMetadataSerializer(serializers.Serializer):
    name = serializers.CharField()
    value = serializers.CharField()


class LayerTechniqueSerializer(serializers.Serializer):
    techniqueID = serializers.CharField()
    tactic = serializers.CharField(required=False, help_text="absent for a tactic the catalogue no longer has")
    score = serializers.IntegerField(help_text="number of tags")
    comment = serializers.CharField()
    enabled = serializers.BooleanField()
    metadata = LayerMetadataSerializer(many=True)
    showSubtechniques = serializers.BooleanField()


class LayerGradientSerializer(serializers.Serializer):
    colors = serializers.ListField(child=serializers.CharField())
    minValue = serializers.IntegerField()
    maxValue = serializers.IntegerField()


class NavigatorLayerSerializer(serializers.Serializer):
    name = serializers.CharField()
    versions = LayerVersionsSerializer()
    domain = serializers.CharField()
    description = serializers.CharField()
    sorting = serializers.IntegerField()
    layout = LayerLayoutSerializer()
    hideDisabled = serializers.BooleanField()
    techniques = LayerTechniqueSerializer(many=True)
    gradient = LayerGradientSerializer()
    legendItems = serializers.ListField(child=serializers.DictField())
    metadata = serializers.ListField(child=serializers.DictField())
    links = serializers.ListField(child=serializers.DictField())
    showTacticRowBackground = serializers.BooleanField()
    tacticRowBackground = serializers.CharField()
    selectTechniquesAcrossTactics = serializers.BooleanField()
    selectSubtechniquesWithParent = serializers.BooleanField()


RULE_PARAMETER = OpenApiParameter("rule_id", str, OpenApiParameter.PATH)
ENTITY_PARAMETER = OpenApiParameter("entity", str, description="entity URI (normalized like fact queries)")


class RulesView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(
        operation_id="ttp_rules_list",
        description="Every stored rule, valid or not, with its state and counters (rules are node-wide).",
        responses={200: RuleListSerializer, **schemas.errors(403)},
    )
    def get(self, request: Request) -> Response:
        rules = service.list_rules()
        return Response({"rules": rules, "total": len(rules)})


class RuleView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(
        operation_id="ttp_rule_get",
        parameters=[RULE_PARAMETER],
        responses={200: RuleDetailSerializer, **schemas.errors(403, 404)},
    )
    def get(self, request: Request, rule_id: str) -> Response:
        return Response(service.rule_detail(rule_id))


class RuleStateView(NodeView):
    permission_by_method = {"PUT": "admin", "DELETE": "admin"}

    @extend_schema(
        operation_id="ttp_rule_state_set",
        description=(
            "Set the rule's state for the whole node (recorded in its history and the audit log, announced "
            "as ttp.rule.state.<rule_id>). Unknown body fields are refused."
        ),
        parameters=[RULE_PARAMETER],
        request=StateInputSerializer,
        responses={200: RuleSerializer, **schemas.errors(403, 404, 422)},
    )
    def put(self, request: Request, rule_id: str) -> Response:
        return Response(service.set_rule_state(self.caller, rule_id, request.data))

    @extend_schema(
        operation_id="ttp_rule_state_clear",
        description="Back to enabled, the default state (recorded like any other change).",
        parameters=[RULE_PARAMETER, OpenApiParameter("reason", str, description="kept in the history")],
        request=None,
        responses={200: RuleSerializer, **schemas.errors(403, 404, 422)},
    )
    def delete(self, request: Request, rule_id: str) -> Response:
        return Response(service.clear_rule_state(self.caller, rule_id, request.query_params))


class ValidateView(NodeView):
    permission_by_method = {"GET": "read", "POST": "admin"}

    @extend_schema(
        operation_id="ttp_rule_validate",
        description=(
            "Validate a rule document and evaluate it on sample facts as the engine would (the rule's stored "
            "state does not apply). Nothing is stored. Unknown body fields are refused."
        ),
        request=ValidateInputSerializer,
        responses={200: ValidateResultSerializer, **schemas.errors(400, 403, 413, 422)},
    )
    def post(self, request: Request) -> Response:
        return Response(service.validate_document(request.data))

    # A rule may be called "validate": its record is here, behind the route that shadows it.
    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        return Response(service.rule_detail("validate"))


class TagsView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(
        operation_id="ttp_tags_list",
        description="The caller's tenant's tags whose tagged fact the caller can see, newest first.",
        parameters=[
            ENTITY_PARAMETER,
            OpenApiParameter(
                "technique", str, description="T1059 (with its sub-techniques' tags) or a sub-technique, T1059.004"
            ),
            OpenApiParameter("rule_id", str),
            OpenApiParameter("cursor", str),
            OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": QUERY_LIMIT_MAX}),
        ],
        responses={200: TagPageSerializer, **schemas.errors(400, 403, 422)},
    )
    def get(self, request: Request) -> Response:
        page = service.list_tags(self.caller, service.parse_tag_query(request.query_params))
        return Response(
            {"tags": [engine.tag_record(t) for t in page.tags], "cursor": page.cursor, "has_more": page.has_more}
        )


class NavigatorView(NodeView):
    permission_by_method = {"GET": "read"}

    @extend_schema(
        operation_id="ttp_navigator_layer",
        description="An ATT&CK Navigator layer (layer format 4.5) of the tags the caller can see, scored by count.",
        parameters=[ENTITY_PARAMETER],
        responses={200: NavigatorLayerSerializer, **schemas.errors(403, 422)},
    )
    def get(self, request: Request) -> Response:
        entity = service.parse_navigator_query(request.query_params)
        return Response(service.navigator_layer(self.caller, entity))
