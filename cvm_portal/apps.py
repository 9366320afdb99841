from django.contrib.admin.apps import AdminConfig


class PortalAdminConfig(AdminConfig):
    """The Django admin, served by the portal's own site (dashboard, optional two-factor login)."""

    default_site = "provisioning.admin_site.PortalAdminSite"
