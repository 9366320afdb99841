from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from provisioning.apis import CertificateVendApi, HealthApi, LegacyCertificateApi, metrics_view

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/certificates", CertificateVendApi.as_view(), name="certificate-vend"),
    path("api/v1/health", HealthApi.as_view(), name="health"),
    path("metrics", metrics_view, name="metrics"),
    # Answers 404 unless CVM_LEGACY_API is on (checked per request, so the setting needs no URL reload).
    path("getcert", LegacyCertificateApi.as_view(), name="legacy-getcert"),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
