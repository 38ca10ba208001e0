from django.urls import path

from decay import api

urlpatterns = [
    path("v1/decay/sweep", api.SweepView.as_view(), name="decay-sweep"),
    path("v1/decay/jobs/<str:job_id>", api.JobView.as_view(), name="decay-job"),
    path("v1/decay/policies", api.PoliciesView.as_view(), name="decay-policies"),
    path("v1/decay/policies/<str:policy_id>", api.PolicyView.as_view(), name="decay-policy"),
]
