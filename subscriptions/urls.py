from django.urls import path

from subscriptions import api

urlpatterns = [
    path("v1/subscriptions", api.SubscriptionsView.as_view(), name="subscriptions"),
    path("v1/subscriptions/<str:subscription_id>", api.SubscriptionDetailView.as_view(), name="subscription-detail"),
    path(
        "v1/subscriptions/<str:subscription_id>/rotate-secret",
        api.RotateSecretView.as_view(),
        name="subscription-rotate-secret",
    ),
    path("v1/subscriptions/<str:subscription_id>/pause", api.PauseView.as_view(), name="subscription-pause"),
    path("v1/subscriptions/<str:subscription_id>/resume", api.ResumeView.as_view(), name="subscription-resume"),
    path("v1/subscriptions/<str:subscription_id>/events", api.EventsView.as_view(), name="subscription-events"),
    path(
        "v1/subscriptions/<str:subscription_id>/events/<str:event_id>/redeliver",
        api.RedeliverView.as_view(),
        name="subscription-event-redeliver",
    ),
    path("v1/subscriptions/<str:subscription_id>/recover", api.RecoverView.as_view(), name="subscription-recover"),
]
