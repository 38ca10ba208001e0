from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

handler404 = "stigmem.api.errors.not_found_view"
handler500 = "stigmem.api.errors.server_error_view"

urlpatterns = [
    path("", include("stigmem.api.urls")),
    path("", include("subscriptions.urls")),
    path("", include("federation.urls")),
    path("", include("decay.urls")),
    path("", include("ttprules.urls")),
    path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
]
