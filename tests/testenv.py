"""Loaded by pytest before Django starts (see pyproject.toml): the environment the suite runs in.

Fixed, obviously fake secrets; SSL redirects off because the in-process test client speaks plain HTTP;
AWS pointed at nothing real so a test that forgets moto cannot reach an account; the AWS IoT quota
governor off, because moto has no quota to protect and waiting for slots only slows the suite (the
governor's own tests set the rates they test).
"""

import os
from pathlib import Path

from scripts.private_files import private_dir

# The test database lives in var/ beside the local portal's: the same rule, owner-only.
private_dir(Path(__file__).resolve().parent.parent / "var")

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-000000")
os.environ.setdefault("CVM_TOKEN_HMAC_KEY", "test-token-hmac-key-not-for-production-0000")
os.environ.setdefault("CVM_AUDIT_HMAC_KEY", "test-audit-hmac-key-not-for-production-0000")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
# Staff log in with a password in most tests; the two-factor tests turn it on themselves.
os.environ.setdefault("CVM_ADMIN_2FA", "off")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
os.environ["CVM_AWS_RATES"] = "off"
for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_ENDPOINT_URL_DYNAMODB"):
    os.environ.pop(name, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"] = "us-east-1"
