import secrets

from django.contrib.auth import get_user_model

from ._base import PortalCommand


class Command(PortalCommand):
    help = "Create a superuser with a random password if no superuser exists yet; print the password once."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(18)
        users.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"created admin account {username!r} with password: {password}")
        self.stdout.write("this password is shown only now; change it in the admin after logging in")
