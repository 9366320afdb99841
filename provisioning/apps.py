from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "provisioning"
    verbose_name = "Provisioning"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.db.backends.signals import connection_created

        from . import checks, receivers  # noqa: F401 - checks registers itself

        user_logged_in.connect(receivers.staff_logged_in, dispatch_uid="cvm-audit-login")
        user_login_failed.connect(receivers.staff_login_failed, dispatch_uid="cvm-audit-login-failed")
        connection_created.connect(receivers.sqlite_files_private, dispatch_uid="cvm-sqlite-private")
