from django.urls import path

from ttprules import api

urlpatterns = [
    path("v1/ttp/rules", api.RulesView.as_view(), name="ttp-rules"),
    # Before the rule route, which would take "validate" for a rule id.
    path("v1/ttp/rules/validate", api.ValidateView.as_view(), name="ttp-rule-validate"),
    path("v1/ttp/rules/<str:rule_id>", api.RuleView.as_view(), name="ttp-rule"),
    path("v1/ttp/rules/<str:rule_id>/state", api.RuleStateView.as_view(), name="ttp-rule-state"),
    path("v1/ttp/tags", api.TagsView.as_view(), name="ttp-tags"),
    path("v1/ttp/navigator", api.NavigatorView.as_view(), name="ttp-navigator"),
]
