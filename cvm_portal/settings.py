"""Settings for the CVM portal, read from the environment (see README, "Configuration").

Everything that differs between a laptop and production comes from an environment variable. Secrets
have no defaults: `make run` generates them into `var/` for the local portal, and with DEBUG off a
missing secret stops the process at start-up with a message naming the variable.
"""

import ipaddress
from datetime import timedelta
from pathlib import Path

import environ
from csp import constants as csp_constants
from django.core.exceptions import ImproperlyConfigured

from provisioning import validators

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)


def _required_secret(name: str, *, min_length: int) -> str:
    value = env.str(name, default="")
    if not value:
        if DEBUG:
            # A throwaway value keeps `DEBUG=1 manage.py shell` usable; nothing signed with it survives.
            return f"insecure-debug-only-{name}"
        raise ImproperlyConfigured(f"{name} must be set when DEBUG is off")
    if len(value) < min_length:
        raise ImproperlyConfigured(f"{name} must be at least {min_length} characters long")
    return value


SECRET_KEY = _required_secret("SECRET_KEY", min_length=32)
# Previous keys still accepted for what they signed (sessions, one-time confirmations), for rotation.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
# With DEBUG off the hosts must be named explicitly (`make run` names 127.0.0.1 and localhost), so a
# production instance never answers for a host nobody chose.
if not DEBUG and "ALLOWED_HOSTS" not in env:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off (comma list of host names)")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name at least one host")

INSTALLED_APPS = [
    "cvm_portal.apps.PortalAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # Its abstract key model (hashed keys, prefixes) is what provisioning.StaffApiKey builds on; its own
    # concrete model and admin page are unused (provisioning/admin.py takes the page away).
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "csp",
    "provisioning",
]

MIDDLEWARE = [
    # First: forwarded headers from anyone but a trusted proxy are gone before anything reads them.
    "provisioning.middleware.ProxyHeadersMiddleware",
    "provisioning.middleware.RequestLogMiddleware",
    # Before anything that could read the body or query string: a charset that is not text is a 400.
    "provisioning.middleware.RequestCharsetMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "provisioning.middleware.ApiGuardMiddleware",
    # A locked-out address is answered here, before sessions, DRF and the body parser cost anything.
    "provisioning.middleware.AddressLockoutMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes requires: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "cvm_portal.urls"
WSGI_APPLICATION = "cvm_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'cvm.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE makes every transaction take the write lock up front, so two writers queue instead of
    # failing with "database is locked" when a reader upgrades; WAL lets readers run beside a writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # A file, not Django's shared in-memory default: concurrency tests need real SQLite locking.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
# Each gunicorn thread keeps its connection between requests: opening one costs more than a refusal's
# whole query (on SQLite, registering Django's functions and the PRAGMAs every time).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # Django's backend with one Redis client per pool and one-round-trip counters (provisioning/cache.py).
    CACHES["default"]["BACKEND"] = "provisioning.cache.RedisCache"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=DEBUG)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Security: TLS is assumed everywhere (the portal is served over HTTPS, directly or behind a proxy).
CVM_TRUSTED_PROXIES = env.int("CVM_TRUSTED_PROXIES", default=0)
if CVM_TRUSTED_PROXIES < 0:
    raise ImproperlyConfigured("CVM_TRUSTED_PROXIES must be 0 or more")
# Only a connection from one of these may set X-Forwarded-For / -Proto: anyone else's headers are dropped
# before anything reads them (provisioning.middleware.ProxyHeadersMiddleware).
CVM_TRUSTED_PROXY_ADDRESSES = []
for _proxy in env.list("CVM_TRUSTED_PROXY_ADDRESSES", default=[]):
    try:
        CVM_TRUSTED_PROXY_ADDRESSES.append(ipaddress.ip_network(_proxy.strip(), strict=False))
    except ValueError:
        raise ImproperlyConfigured(f"CVM_TRUSTED_PROXY_ADDRESSES: {_proxy!r} is not an address or CIDR") from None
if CVM_TRUSTED_PROXIES and not CVM_TRUSTED_PROXY_ADDRESSES:
    raise ImproperlyConfigured(
        "CVM_TRUSTED_PROXIES is set but CVM_TRUSTED_PROXY_ADDRESSES is not: name the proxies' addresses or CIDRs, "
        "or a client that reaches the portal directly could forge X-Forwarded-For"
    )
if CVM_TRUSTED_PROXY_ADDRESSES:
    # Only a proxy we trust may tell us the original scheme; without one the header is ignored.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Liveness and readiness are probed over plain HTTP from beside the process (the image's HEALTHCHECK, an
# orchestrator), never through the TLS proxy: redirecting them would make every probe fail.
SECURE_REDIRECT_EXEMPT = [r"^api/v1/(health|ready)$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading commits the whole domain to HTTPS in browsers for months; that is the domain owner's call
# (SECURE_HSTS_PRELOAD=1), not a default, so `check --deploy` is not asked to nag about it.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy on every page (django-csp): scripts, styles, images and forms only from the
# portal itself, no plugins, no framing, no <base> tricks. The API docs page relaxes styles (cvm_portal/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp_constants.SELF],
        "object-src": [csp_constants.NONE],
        "frame-ancestors": [csp_constants.NONE],
        "base-uri": [csp_constants.SELF],
        "form-action": [csp_constants.SELF],
    }
}
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "provisioning.admin.forbidden.csrf_failure"

# --- Staff login: lockout with a cool-off (so nobody can lock staff out for good), optional TOTP.
AXES_FAILURE_LIMIT = env.int("CVM_ADMIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("CVM_ADMIN_LOCKOUT_MINUTES", default=15))
# Each combination is counted on its own against the limit: one username from one address (a typo'd
# password), one address whatever the username (spraying many accounts), one username from any address
# (a locked account does not open from a second address).
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "provisioning.middleware.client_address"
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
AXES_VERBOSE = False
# With it on, staff must log in with a TOTP code from a device enrolled in the admin (django-otp);
# `manage.py enroll_totp USERNAME` enrols the first one. On by default in production; `make run`'s local
# portal turns it off and says so, and `check --deploy` warns whenever it is off with DEBUG off.
CVM_ADMIN_2FA = env.bool("CVM_ADMIN_2FA", default=not DEBUG)
OTP_TOTP_ISSUER = "CVM portal"

# --- REST API
REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": ["provisioning.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "provisioning.apis.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CVM portal device API",
    "DESCRIPTION": "Certificate vending for AWS IoT Core: a device trades its serial and one-time token "
    "for an X.509 certificate. The staff API (devices, tokens, revoke, reset, audit events) serves factory "
    "lines and security tooling; it takes `Authorization: Api-Key <key>` with a key made by "
    "`manage.py create_api_key NAME --role factory|security|auditor`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Tokens
CVM_TOKEN_HMAC_KEY = _required_secret("CVM_TOKEN_HMAC_KEY", min_length=32)
# Older keys still accepted when checking a token, so the key can rotate without reflashing devices.
CVM_TOKEN_HMAC_KEY_FALLBACKS = env.list("CVM_TOKEN_HMAC_KEY_FALLBACKS", default=[])
CVM_TOKEN_TTL_DAYS = env.int("CVM_TOKEN_TTL_DAYS", default=90)
if not validators.TOKEN_TTL_MIN_DAYS <= CVM_TOKEN_TTL_DAYS <= validators.TOKEN_TTL_MAX_DAYS:
    raise ImproperlyConfigured(
        f"CVM_TOKEN_TTL_DAYS must be {validators.TOKEN_TTL_MIN_DAYS} to {validators.TOKEN_TTL_MAX_DAYS} days"
    )

# --- Audit log: keyed hash chain (the key lives outside the database) and anchors outside it too.
CVM_AUDIT_HMAC_KEY = _required_secret("CVM_AUDIT_HMAC_KEY", min_length=32)
# Older keys still accepted when verifying, so the key can rotate; new events use the current one.
CVM_AUDIT_HMAC_KEY_FALLBACKS = env.list("CVM_AUDIT_HMAC_KEY_FALLBACKS", default=[])
# Where the worker appends the chain's head (a file path or s3://BUCKET/PREFIX); empty: not anchored.
CVM_AUDIT_ANCHOR_SINK = env.str("CVM_AUDIT_ANCHOR_SINK", default="")
CVM_AUDIT_ANCHOR_SECONDS = env.int("CVM_AUDIT_ANCHOR_SECONDS", default=300)
# How long S3 Object Lock keeps each anchor immutable (COMPLIANCE mode: not even the root user can delete).
CVM_AUDIT_ANCHOR_RETENTION_DAYS = env.int("CVM_AUDIT_ANCHOR_RETENTION_DAYS", default=3650)

# --- Device API limits
CVM_MAX_BODY_BYTES = 64 * 1024
# The staff API's bulk calls (POST /api/v1/devices and /api/v1/tokens) take up to 100,000 entries; a
# registration of 100,000 serials with a product is about 5 MB of JSON. Every other path keeps 64 KiB.
CVM_API_BULK_MAX_BODY_BYTES = env.int("CVM_API_BULK_MAX_BODY_BYTES", default=16 * 1024 * 1024)
# Requests per staff API key per minute (a fixed window in the cache, so shared by every instance on Redis).
CVM_API_KEY_REQUESTS_PER_MINUTE = env.int("CVM_API_KEY_REQUESTS_PER_MINUTE", default=600)
if CVM_API_BULK_MAX_BODY_BYTES < CVM_MAX_BODY_BYTES or CVM_API_KEY_REQUESTS_PER_MINUTE < 1:
    raise ImproperlyConfigured(
        "CVM_API_BULK_MAX_BODY_BYTES must be at least 65536 and CVM_API_KEY_REQUESTS_PER_MINUTE at least 1"
    )
# Django's own cap on a body it reads whole (2.5 MiB by default) would refuse a bulk call before its own
# limit: raise it to that. Every path under /api/ is held to its limit before Django reads anything
# (provisioning.middleware.ApiGuardMiddleware); forms elsewhere stay bounded by their field count.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(CVM_API_BULK_MAX_BODY_BYTES, 2_621_440)
CVM_FAILED_TOKENS_PER_SERIAL = env.int("CVM_FAILED_TOKENS_PER_SERIAL", default=10)
CVM_FAILED_TOKENS_PER_ADDRESS = env.int("CVM_FAILED_TOKENS_PER_ADDRESS", default=100)
CVM_REQUESTS_PER_ADDRESS = env.int("CVM_REQUESTS_PER_ADDRESS", default=6000)
CVM_REQUIRE_CSR = env.bool("CVM_REQUIRE_CSR", default=False)
# The reference CVM's device endpoint (GET /getcert?serialNumber=…&deviceToken=…), for firmware that
# cannot be reflashed. Off unless asked for: its token travels in the URL.
CVM_LEGACY_API = env.bool("CVM_LEGACY_API", default=False)
# A claim older than this is taken to belong to a process that died mid-issuance and is recovered.
CVM_CLAIM_TIMEOUT_SECONDS = env.int("CVM_CLAIM_TIMEOUT_SECONDS", default=120)
# How long a lost answer can be fetched again with the same token and CSR key (SPEC §3.1).
CVM_REPLAY_WINDOW_SECONDS = env.int("CVM_REPLAY_WINDOW_SECONDS", default=86400)
# How long a rotation may stay unconfirmed before the new certificate is revoked again (SPEC §3.2).
CVM_ROTATION_GRACE_SECONDS = env.int("CVM_ROTATION_GRACE_SECONDS", default=604800)
# Devices whose certificate is older than this many days are listed as "rotation due" in the admin
# (a product's own rotate_after_days takes precedence); 0: never due.
CVM_ROTATE_AFTER_DAYS = env.int("CVM_ROTATE_AFTER_DAYS", default=0)
for _name in ("CVM_REPLAY_WINDOW_SECONDS", "CVM_ROTATION_GRACE_SECONDS", "CVM_ROTATE_AFTER_DAYS"):
    if globals()[_name] < 0:
        raise ImproperlyConfigured(f"{_name} must be 0 or more")

# --- AWS
CVM_THING_NAME_PREFIX = env.str("CVM_THING_NAME_PREFIX", default="")
CVM_IOT_POLICY_NAME = env.str("CVM_IOT_POLICY_NAME", default="cvm-device-policy")
CVM_DYNAMODB_TABLE = env.str("CVM_DYNAMODB_TABLE", default="cvm-device-association")
# Names AWS would refuse fail here, at start, not as a 503 on every device's first request.
if CVM_THING_NAME_PREFIX and not validators.THING_NAME_RE.match(CVM_THING_NAME_PREFIX + "x" * 64):
    raise ImproperlyConfigured(
        "CVM_THING_NAME_PREFIX: thing names allow only letters, digits, ':', '_' and '-', at most 128 characters "
        "with the 64-character serial"
    )
if not validators.POLICY_NAME_RE.match(CVM_IOT_POLICY_NAME):
    raise ImproperlyConfigured("CVM_IOT_POLICY_NAME: 1-128 of letters, digits and + = , . @ _ - (AWS IoT's rule)")
if not validators.TABLE_NAME_RE.match(CVM_DYNAMODB_TABLE):
    raise ImproperlyConfigured("CVM_DYNAMODB_TABLE: 3-255 of letters, digits and _ . - (DynamoDB's rule)")
CVM_OUTBOX_RETENTION_DAYS = env.int("CVM_OUTBOX_RETENTION_DAYS", default=7)

# --- Webhooks (SPEC §10): delivery timeouts, the longest pause between retries, an extra CA bundle.
CVM_WEBHOOK_CONNECT_TIMEOUT = env.float("CVM_WEBHOOK_CONNECT_TIMEOUT", default=5.0)
CVM_WEBHOOK_READ_TIMEOUT = env.float("CVM_WEBHOOK_READ_TIMEOUT", default=10.0)
CVM_WEBHOOK_MAX_BACKOFF_SECONDS = env.int("CVM_WEBHOOK_MAX_BACKOFF_SECONDS", default=3600)
# Endpoints are verified against certifi's bundle, or this file (an internal CA) when set.
CVM_WEBHOOK_CA_BUNDLE = env.str("CVM_WEBHOOK_CA_BUNDLE", default="")
if min(CVM_WEBHOOK_CONNECT_TIMEOUT, CVM_WEBHOOK_READ_TIMEOUT) <= 0 or CVM_WEBHOOK_MAX_BACKOFF_SECONDS < 1:
    raise ImproperlyConfigured("CVM_WEBHOOK_*_TIMEOUT must be above 0 and CVM_WEBHOOK_MAX_BACKOFF_SECONDS at least 1")
CVM_AWS_CONNECT_TIMEOUT = env.float("CVM_AWS_CONNECT_TIMEOUT", default=3.0)
CVM_AWS_READ_TIMEOUT = env.float("CVM_AWS_READ_TIMEOUT", default=10.0)
CVM_AWS_MAX_ATTEMPTS = env.int("CVM_AWS_MAX_ATTEMPTS", default=3)
# GET /api/v1/ready: how long each part (database, cache, AWS IoT) may take to answer before it counts as
# failed, and how long one AWS IoT answer stands for this process (the probe is a real AWS call).
CVM_READY_TIMEOUT_SECONDS = env.float("CVM_READY_TIMEOUT_SECONDS", default=2.0)
CVM_READY_AWS_SECONDS = env.float("CVM_READY_AWS_SECONDS", default=15.0)
if CVM_READY_TIMEOUT_SECONDS <= 0 or CVM_READY_AWS_SECONDS < 0:
    raise ImproperlyConfigured("CVM_READY_TIMEOUT_SECONDS must be more than 0 and CVM_READY_AWS_SECONDS 0 or more")

# --- AWS IoT quota governor (provisioning/governor.py): calls per second per API, for the account.
# Defaults follow AWS IoT Core's published control-plane quotas; set your account's with e.g.
# CVM_AWS_RATES="CreateKeysAndCertificate=10,AttachPolicy=15". 0 switches the governor off for an API;
# the word `off` switches it off for every API the list does not name (the test suite runs with `off`:
# moto has no quota, and the governor's own tests set the rates they test).
CVM_AWS_RATES = {
    "default": 10.0,
    "CreateKeysAndCertificate": 10.0,
    "CreateCertificateFromCsr": 15.0,
    "AttachPolicy": 15.0,
    "AttachThingPrincipal": 15.0,
    "UpdateCertificate": 15.0,
    "CreateThing": 15.0,
    "DescribeEndpoint": 10.0,
}
_rates = [_pair.strip() for _pair in env.list("CVM_AWS_RATES", default=[])]
if "off" in (_pair.lower() for _pair in _rates):
    CVM_AWS_RATES = {"default": 0.0}
for _pair in _rates:
    if _pair.lower() == "off":
        continue
    _name, _, _rate = _pair.partition("=")
    try:
        CVM_AWS_RATES[_name.strip()] = float(_rate)
    except ValueError:
        raise ImproperlyConfigured(f"CVM_AWS_RATES: {_pair!r} is not API=calls_per_second") from None
CVM_AWS_BURST_SECONDS = env.float("CVM_AWS_BURST_SECONDS", default=1.0)
CVM_AWS_QUEUE_SECONDS = env.float("CVM_AWS_QUEUE_SECONDS", default=2.0)
_cache_url = env.str("CACHE_URL", default="")
# The quota is shared through Redis whenever the cache is Redis (all workers, all instances).
CVM_QUOTA_REDIS_URL = env.str(
    "CVM_QUOTA_REDIS_URL", default=_cache_url if _cache_url.startswith(("redis://", "rediss://")) else ""
)
# Who may read /metrics: with a token, any caller presenting it; without one, loopback only.
CVM_METRICS_TOKEN = env.str("CVM_METRICS_TOKEN", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "provisioning.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django logs the request line on 4xx/5xx; our own request log replaces it without the query.
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "ERROR"},
        "botocore": {"level": "WARNING"},
    },
}
