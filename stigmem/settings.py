"""Settings of the stigmem node.

Every operator-facing setting is an environment variable named ``STIGMEM_*`` (the reference
node's name where one exists), read once here. ``DATABASE_URL`` selects PostgreSQL; without it
the node runs on an embedded SQLite file tuned for concurrent access.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_number(name: str, default: float, cast: type = int) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return cast(raw.strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


DATA_DIR = Path(env_str("STIGMEM_DATA_DIR") or BASE_DIR / "var")
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """The server secret: signs cursors and keys the API-key hashes.

    Production sets STIGMEM_SECRET_KEY (the same value on every host). The embedded default
    generates one on first start and keeps it in the data directory, so keys survive restarts.
    """
    configured = env_str("STIGMEM_SECRET_KEY")
    if configured:
        return configured
    path = DATA_DIR / "secret.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("STIGMEM_DEBUG", False)

# --- the node -----------------------------------------------------------------------------
STIGMEM_VERSION = "0.1.0"
STIGMEM_NODE_URL = env_str("STIGMEM_NODE_URL", "http://127.0.0.1:8765").rstrip("/")
STIGMEM_NODE_ID = env_str("STIGMEM_NODE_ID")
STIGMEM_DEFAULT_TENANT = env_str("STIGMEM_DEFAULT_TENANT", "default")
STIGMEM_AUTH_REQUIRED = env_bool("STIGMEM_AUTH_REQUIRED", True)
STIGMEM_FEDERATION_ENABLED = env_bool("STIGMEM_FEDERATION_ENABLED", False)
STIGMEM_API_KEY_MAX_AGE_DAYS = int(env_number("STIGMEM_API_KEY_MAX_AGE_DAYS", 90))
STIGMEM_METRICS_TOKEN = env_str("STIGMEM_METRICS_TOKEN")
STIGMEM_SPEC_URL = env_str("STIGMEM_SPEC_URL", "https://stigmem.dev/spec")
# Largest request body accepted (a batch of 1000 facts fits comfortably); bigger -> 413.
STIGMEM_MAX_BODY_BYTES = int(env_number("STIGMEM_MAX_BODY_BYTES", 8 * 1024 * 1024))
# Per-key token buckets: sustained requests per second and burst size, per web process.
STIGMEM_RATE_LIMIT_WRITE_PER_S = env_number("STIGMEM_RATE_LIMIT_WRITE_PER_S", 500.0, float)
STIGMEM_RATE_LIMIT_WRITE_BURST = env_number("STIGMEM_RATE_LIMIT_WRITE_BURST", 1000.0, float)
STIGMEM_RATE_LIMIT_READ_PER_S = env_number("STIGMEM_RATE_LIMIT_READ_PER_S", 1000.0, float)
STIGMEM_RATE_LIMIT_READ_BURST = env_number("STIGMEM_RATE_LIMIT_READ_BURST", 2000.0, float)
STIGMEM_BIND = env_str("STIGMEM_BIND", "127.0.0.1:8765")
# Processes over threads: on 2 cores, 4 x 1 served 1.5-2.5x the requests of 2 x 4, whose threads
# contended for the GIL while one of them held the write lock (docs/PERFORMANCE.md).
STIGMEM_WEB_WORKERS = int(env_number("STIGMEM_WEB_WORKERS", 4))
STIGMEM_WEB_THREADS = int(env_number("STIGMEM_WEB_THREADS", 1))
STIGMEM_Q_WORKERS = int(env_number("STIGMEM_Q_WORKERS", 2))
# CPU priority (nice) runnode gives the qcluster: background work yields the CPU to requests.
STIGMEM_Q_NICE = int(env_number("STIGMEM_Q_NICE", 5))
# Set by runnode for the qcluster it starts: every write of this process is background work, which
# bulk work (a decay sweep) does not end its chunks early for (stigmem.clock.background_writes).
STIGMEM_BACKGROUND_PROCESS = env_bool("STIGMEM_BACKGROUND_PROCESS", False)
STIGMEM_REDIS_URL = env_str("STIGMEM_REDIS_URL")
# The node's Ed25519 signing key (raw 32-byte seed, base64url); generated and stored when unset.
STIGMEM_NODE_SIGNING_KEY = env_str("STIGMEM_NODE_SIGNING_KEY")
# Read-time prompt-injection detection on string/text values: warn (default), block or off.
STIGMEM_SANITIZER_MODE = env_str("STIGMEM_SANITIZER_MODE", "warn").lower()
if STIGMEM_SANITIZER_MODE not in {"warn", "block", "off"}:
    raise ImproperlyConfigured(f"STIGMEM_SANITIZER_MODE must be warn, block or off, got {STIGMEM_SANITIZER_MODE!r}")
STIGMEM_SANITIZER_EXTRA_PATTERNS_FILE = env_str("STIGMEM_SANITIZER_EXTRA_PATTERNS_FILE")
# Audit rows older than this are pruned by a schedule; 0 keeps them forever.
STIGMEM_AUDIT_RETENTION_DAYS = int(env_number("STIGMEM_AUDIT_RETENTION_DAYS", 365))
# How stale another process's view of the tombstones may be; the creating process sees changes at once.
STIGMEM_TOMBSTONE_CACHE_S = env_number("STIGMEM_TOMBSTONE_CACHE_S", 2.0, float)
# Subscriptions and webhook delivery (WIRE.md §5).
STIGMEM_WEBHOOK_ALLOW_PRIVATE = env_bool("STIGMEM_WEBHOOK_ALLOW_PRIVATE", False)
STIGMEM_SUBSCRIPTION_REPLAY_S = int(env_number("STIGMEM_SUBSCRIPTION_REPLAY_S", 86400))
STIGMEM_SUBSCRIPTION_CIRCUIT_THRESHOLD = int(env_number("STIGMEM_SUBSCRIPTION_CIRCUIT_THRESHOLD", 10))
STIGMEM_SUBSCRIPTION_DISABLE_AFTER_S = int(env_number("STIGMEM_SUBSCRIPTION_DISABLE_AFTER_S", 5 * 86400))
# Seconds between attempts; after the last one a delivery is `failed` (dead letter, replayable).
_DEFAULT_RETRY_SCHEDULE = "5,30,120,600,1800,3600,7200,14400,28800,43200"
try:
    STIGMEM_SUBSCRIPTION_RETRY_SCHEDULE = [
        int(x) for x in env_str("STIGMEM_SUBSCRIPTION_RETRY_SCHEDULE", _DEFAULT_RETRY_SCHEDULE).split(",")
    ]
except ValueError as exc:
    raise ImproperlyConfigured("STIGMEM_SUBSCRIPTION_RETRY_SCHEDULE must be comma-separated seconds") from exc
STIGMEM_WEBHOOK_TIMEOUT_S = env_number("STIGMEM_WEBHOOK_TIMEOUT_S", 10.0, float)
STIGMEM_DELIVERY_CONCURRENCY = int(env_number("STIGMEM_DELIVERY_CONCURRENCY", 16))
# First circuit cool-down in seconds (doubles after each failed probe, up to 1 h).
STIGMEM_SUBSCRIPTION_CIRCUIT_COOLDOWN_S = int(env_number("STIGMEM_SUBSCRIPTION_CIRCUIT_COOLDOWN_S", 30))
# A delivery claim's lease is 2 x the webhook timeout plus this margin; a dead worker's claims
# return to the queue when it runs out.
STIGMEM_DELIVERY_LEASE_MARGIN_S = env_number("STIGMEM_DELIVERY_LEASE_MARGIN_S", 60.0, float)
# Where `wake` subscriptions write their JSON lines: "-" is stderr, else a file path.
STIGMEM_WAKE_LOG = env_str("STIGMEM_WAKE_LOG", "-")
# Federation (WIRE.md §6). A peer's address may be private only when this is set (development, tests).
STIGMEM_FEDERATION_ALLOW_PRIVATE = env_bool("STIGMEM_FEDERATION_ALLOW_PRIVATE", False)
# Serve `team`-scope facts to peers whose agreement includes `team` (off: team stays in-house).
STIGMEM_FEDERATION_ALLOW_TEAM = env_bool("STIGMEM_FEDERATION_ALLOW_TEAM", False)
# Seconds between scheduled pulls of every active peer.
STIGMEM_FEDERATION_PULL_INTERVAL_S = int(env_number("STIGMEM_FEDERATION_PULL_INTERVAL_S", 30))
# How long one pull of one peer may keep draining `has_more` pages before it yields.
STIGMEM_FEDERATION_PULL_BUDGET_S = env_number("STIGMEM_FEDERATION_PULL_BUDGET_S", 20.0, float)
# Facts asked for per page (the serving side allows at most 500).
STIGMEM_FEDERATION_PAGE_LIMIT = int(env_number("STIGMEM_FEDERATION_PAGE_LIMIT", 500))
# Peer HTTP timeout in seconds (connect and each read); the well-known fetch uses 5 s (WIRE.md §6.2).
STIGMEM_FEDERATION_TIMEOUT_S = env_number("STIGMEM_FEDERATION_TIMEOUT_S", 10.0, float)
# Peers pulled at once by one worker's pull cycle.
STIGMEM_FEDERATION_PULL_CONCURRENCY = int(env_number("STIGMEM_FEDERATION_PULL_CONCURRENCY", 4))
# A remote HLC further than this ahead of our clock is rejected on ingest.
STIGMEM_FEDERATION_MAX_FUTURE_SKEW_S = int(env_number("STIGMEM_FEDERATION_MAX_FUTURE_SKEW_S", 300))
# Decay (WIRE.md §7). A sweep over more facts than this (not a dry run) runs as a job on a worker.
STIGMEM_ASYNC_JOB_THRESHOLD = int(env_number("STIGMEM_ASYNC_JOB_THRESHOLD", 100_000))
# Minutes between scheduled policy sweeps of every tenant.
STIGMEM_DECAY_SWEEP_MINUTES = int(env_number("STIGMEM_DECAY_SWEEP_MINUTES", 60))
# Facts (by seq range) one sweep transaction covers: bounds how long writers wait for a sweep.
STIGMEM_DECAY_CHUNK = int(env_number("STIGMEM_DECAY_CHUNK", 20_000))
# Target milliseconds per sweep transaction: chunk sizes adapt to it, so writers wait at most about this long.
STIGMEM_DECAY_CHUNK_MS = int(env_number("STIGMEM_DECAY_CHUNK_MS", 50))
# A sweep lock not renewed for this long belongs to a dead process and may be taken over.
STIGMEM_DECAY_LOCK_S = int(env_number("STIGMEM_DECAY_LOCK_S", 300))
# TTP rules (WIRE.md §8): the directory of rule files the node loads (node-wide configuration).
STIGMEM_TTP_RULES_DIR = Path(env_str("STIGMEM_TTP_RULES_DIR") or BASE_DIR / "ttprules" / "rules")
# Password of the `admin` login created on first start; generated and printed when unset.
STIGMEM_ADMIN_PASSWORD = env_str("STIGMEM_ADMIN_PASSWORD")


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if not STIGMEM_AUTH_REQUIRED and not _is_loopback_url(STIGMEM_NODE_URL):
    raise ImproperlyConfigured(
        "STIGMEM_AUTH_REQUIRED=false is only allowed when STIGMEM_NODE_URL is a loopback "
        f"address (development); STIGMEM_NODE_URL is {STIGMEM_NODE_URL!r}"
    )

_node_host = urlsplit(STIGMEM_NODE_URL).hostname or "127.0.0.1"
ALLOWED_HOSTS = [
    h.strip()
    for h in env_str("STIGMEM_ALLOWED_HOSTS", f"{_node_host},127.0.0.1,localhost,[::1]").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [STIGMEM_NODE_URL]

# --- Django -------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "stigmem.apps.StigmemConfig",
    "subscriptions.apps.SubscriptionsConfig",
    "federation.apps.FederationConfig",
    "decay.apps.DecayConfig",
    "ttprules.apps.TtprulesConfig",
]

MIDDLEWARE = [
    "stigmem.middleware.RequestMetricsMiddleware",
    "stigmem.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "stigmem.urls"
WSGI_APPLICATION = "stigmem.wsgi.application"
APPEND_SLASH = False

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

DATABASE_URL = env_str("DATABASE_URL")
# Pages the WAL may reach before a commit checkpoints it with the writer lock held (SQLite's
# default: 1,000): the backend's checkpoints off the lock have copied nearly all of them by then.
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 10_000

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "stigmem.sqlite_backend",
            "NAME": env_str("STIGMEM_DB_PATH") or str(DATA_DIR / "stigmem.db"),
            "OPTIONS": {
                # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock
                # at BEGIN so two writers queue on the busy timeout instead of deadlocking on
                # a lock upgrade.
                "init_command": (
                    "PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=NORMAL;"
                    "PRAGMA temp_store=MEMORY;"
                    "PRAGMA cache_size=-65536;"
                    "PRAGMA mmap_size=268435456;"
                    # The backend checkpoints after commits, off the writer lock, and SQLite's own
                    # checkpoint inside a commit (lock held) is only the rare backstop that lets
                    # the WAL start over (stigmem/sqlite_backend).
                    f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES};"
                ),
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # Keep each thread's connection: opening one per request (and rerunning the pragmas)
            # was a measurable share of a small request (docs/PERFORMANCE.md).
            "CONN_MAX_AGE": None,
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Admin static files are served from the packages directly when collectstatic has not run.
WHITENOISE_USE_FINDERS = True
DATA_UPLOAD_MAX_MEMORY_SIZE = STIGMEM_MAX_BODY_BYTES

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["stigmem.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["stigmem.permissions.IsAuthenticatedCaller"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "stigmem.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["stigmem.ratelimit.KeyRateThrottle"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "stigmem node",
    "DESCRIPTION": "Shared, persistent memory for AI agents (stigmem wire protocol).",
    "VERSION": STIGMEM_VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Serve the docs page's assets from the node itself: it must work without internet access.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "FactScopeEnum": ["local", "team", "company", "public"],
        "TombstoneScopeEnum": ["local", "team", "company", "public", "*"],
        "SubscriptionStatusEnum": ["active", "paused", "disabled"],
        "ConflictStatusEnum": ["unresolved", "resolved"],
        "PeerStatusEnum": ["pending_verification", "pending_approval", "rejected", "active", "suspended", "revoked"],
        "PeerRegistrationStatusEnum": ["pending_approval", "rejected"],
        "TtpRuleStateEnum": ["enabled", "disabled", "clipped", "shadow"],
    },
}

# --- background work (django-q2) ------------------------------------------------------------
Q_CLUSTER = {
    "name": "stigmem",
    "workers": STIGMEM_Q_WORKERS,
    "timeout": 600,
    "retry": 900,
    "max_attempts": 3,
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "poll": 0.5,
    "label": "Background tasks",
}
if STIGMEM_REDIS_URL:
    Q_CLUSTER["redis"] = STIGMEM_REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("STIGMEM_LOG_LEVEL", "INFO")},
    "loggers": {"django_q": {"level": "WARNING"}},
}
