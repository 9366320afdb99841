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
    ReadyApi,
    metrics_view,
)
from provisioning.staff_apis import (
    AuditEventsApi,
    DeviceDetailApi,
    DeviceResetApi,
    DeviceRevokeApi,
    DevicesApi,
    TokensApi,
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
    path("api/v1/ready", ReadyApi.as_view(), name="ready"),
    # The staff API (SPEC §9).
    path("api/v1/devices", DevicesApi.as_view(), name="devices"),
    path("api/v1/devices/<str:serial>", DeviceDetailApi.as_view(), name="device"),
    path("api/v1/devices/<str:serial>/revoke", DeviceRevokeApi.as_view(), name="device-revoke"),
    path("api/v1/devices/<str:serial>/reset", DeviceResetApi.as_view(), name="device-reset"),
    path("api/v1/tokens", TokensApi.as_view(), name="tokens"),
    path("api/v1/audit-events", AuditEventsApi.as_view(), name="audit-events"),
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
