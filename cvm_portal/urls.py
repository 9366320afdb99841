from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from provisioning.apis import (
    CertificateRotateApi,
    CertificateRotateConfirmApi,
    CertificateVendApi,
    HealthApi,
    LegacyCertificateApi,
    metrics_view,
)

# A refused admin page keeps the admin's layout and a way back (provisioning/admin/forbidden.py).
handler403 = "provisioning.admin.forbidden.permission_denied"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/certificates", CertificateVendApi.as_view(), name="certificate-vend"),
    path("api/v1/certificates/rotate", CertificateRotateApi.as_view(), name="certificate-rotate"),
    path("api/v1/certificates/rotate/confirm", CertificateRotateConfirmApi.as_view(), name="certificate-confirm"),
    path("api/v1/health", HealthApi.as_view(), name="health"),
    path("metrics", metrics_view, name="metrics"),
    # Answers 404 unless CVM_LEGACY_API is on (checked per request, so the setting needs no URL reload).
    path("getcert", LegacyCertificateApi.as_view(), name="legacy-getcert"),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's script as a file, so the page needs no inline script; Swagger UI
    # still sets inline styles and draws data: images, which the strict policy would block.
    path(
        "api/docs",
        csp_update({"style-src": [SELF, UNSAFE_INLINE], "img-src": [SELF, "data:"]})(
            SpectacularSwaggerSplitView.as_view(url_name="schema")
        ),
        name="docs",
    ),
]
