from django.contrib.admin.apps import AdminConfig


class PortalAdminConfig(AdminConfig):
    """The Django admin, served by the portal's own site (dashboard, optional two-factor login)."""

    default_site = "provisioning.admin_site.PortalAdminSite"

    def ready(self) -> None:
        super().ready()  # autodiscover: every app's admin module has registered its models now
        from provisioning.admin import declared_lookups_everywhere

        declared_lookups_everywhere(self.module.site)
