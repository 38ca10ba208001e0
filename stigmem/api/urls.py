from django.urls import path

from stigmem.api import audit, conflicts, facts, gardens, keys, meta, tombstones

urlpatterns = [
    path("v1/facts", facts.FactsView.as_view(), name="facts"),
    path("v1/facts/batch", facts.FactBatchView.as_view(), name="facts-batch"),
    path("v1/facts/<str:ref>", facts.FactDetailView.as_view(), name="fact-detail"),
    path("v1/facts/<str:ref>/verify-cid", facts.VerifyCidView.as_view(), name="fact-verify-cid"),
    path("v1/conflicts", conflicts.ConflictsView.as_view(), name="conflicts"),
    path("v1/conflicts/<str:conflict_id>/resolve", conflicts.ResolveConflictView.as_view(), name="conflict-resolve"),
    path("v1/auth/keys", keys.KeysView.as_view(), name="keys"),
    path("v1/auth/keys/<str:key_id>", keys.KeyDetailView.as_view(), name="key-detail"),
    path("v1/gardens", gardens.GardensView.as_view(), name="gardens"),
    path("v1/gardens/<str:garden>", gardens.GardenDetailView.as_view(), name="garden-detail"),
    path("v1/gardens/<str:garden>/members", gardens.GardenMembersView.as_view(), name="garden-members"),
    # `path`: the member's entity URI contains slashes once Django has decoded %2F.
    path("v1/gardens/<str:garden>/members/<path:member_uri>", gardens.GardenMemberView.as_view(), name="garden-member"),
    path("v1/admin/audit", audit.AuditView.as_view(), name="admin-audit"),
    path("v1/tombstones", tombstones.TombstonesView.as_view(), name="tombstones"),
    # Before the status route, whose entity URI may itself contain '/'.
    path("v1/tombstones/<str:tombstone_id>/revoke", tombstones.RevokeTombstoneView.as_view(), name="tombstone-revoke"),
    path("v1/tombstones/<path:entity_uri>", tombstones.TombstoneStatusView.as_view(), name="tombstone-status"),
    path("v1/me", meta.MeView.as_view(), name="me"),
    path(".well-known/stigmem", meta.WellKnownView.as_view(), name="well-known"),
    path("healthz", meta.HealthView.as_view(), name="healthz"),
    path("metrics", meta.metrics_view, name="metrics"),
]
