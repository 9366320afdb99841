from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django_otp.plugins.otp_totp.models import TOTPDevice

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Enrol a TOTP authenticator for a staff account and print its otpauth:// URL once (scan it, or type "
        "its secret into the authenticator app). With CVM_ADMIN_2FA on, that account then logs in with the code."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="authenticator", help="a label for the device, shown in the admin")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no account named {username!r}")
        device = TOTPDevice.objects.create(user=user, name=name, confirmed=True)
        self.stdout.write(f"enrolled {name!r} for {username}; add it to the authenticator app now:")
        self.stdout.write(device.config_url)
