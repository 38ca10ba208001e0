from django.urls import path

from federation.api import peers, serve

urlpatterns = [
    path("v1/federation/peers", peers.PeersView.as_view(), name="federation-peers"),
    path(
        "v1/federation/peers/<str:peer_id>/<str:action>", peers.PeerActionView.as_view(), name="federation-peer-action"
    ),
    path("v1/federation/facts", serve.FactsView.as_view(), name="federation-facts"),
    path("v1/federation/facts/push", serve.PushView.as_view(), name="federation-push"),
    path("v1/federation/tombstones", serve.TombstonesView.as_view(), name="federation-tombstones"),
]
