from django.urls import path

from stigmem.api import conflicts, facts, keys, meta

urlpatterns = [
    path("v1/facts", facts.FactsView.as_view(), name="facts"),
    path("v1/facts/batch", facts.FactBatchView.as_view(), name="facts-batch"),
    path("v1/facts/<str:ref>", facts.FactDetailView.as_view(), name="fact-detail"),
    path("v1/facts/<str:ref>/verify-cid", facts.VerifyCidView.as_view(), name="fact-verify-cid"),
    path("v1/conflicts", conflicts.ConflictsView.as_view(), name="conflicts"),
    path("v1/conflicts/<str:conflict_id>/resolve", conflicts.ResolveConflictView.as_view(), name="conflict-resolve"),
    path("v1/auth/keys", keys.KeysView.as_view(), name="keys"),
    path("v1/auth/keys/<str:key_id>", keys.KeyDetailView.as_view(), name="key-detail"),
    path("v1/me", meta.MeView.as_view(), name="me"),
    path(".well-known/stigmem", meta.WellKnownView.as_view(), name="well-known"),
    path("healthz", meta.HealthView.as_view(), name="healthz"),
    path("metrics", meta.metrics_view, name="metrics"),
]
