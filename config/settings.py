"""Settings for Feature Catalog Console, read from the environment with embedded defaults.

Every setting is listed in the README. Without any variable set the console runs on one laptop:
SQLite under DATA_DIR for the catalog, a filesystem broker under DATA_DIR for Celery.
"""

import json
import os
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext

from provisioning.memory import mmap_threshold_wanted, retrieval_memory_budget, retrieval_readers

# Lets generic classes (ModelAdmin[Team], QuerySet[Feature]) be subscripted at run time, as mypy sees them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DATA_DIR = Path(os.environ.get("DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", False)
# The embedded default is for a laptop; production sets DJANGO_SECRET_KEY (README, "Settings").
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-local-only-key-set-DJANGO_SECRET_KEY-in-production")
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "catalog",
    "api",
    "provisioning",
    "workers",
]

MIDDLEWARE = [
    "config.logging.RequestIdMiddleware",
    "api.errors.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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


def database_config() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'catalog.sqlite3'}")
    config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))
    config.setdefault("TEST", {})
    if config["ENGINE"] == "django.db.backends.postgresql":
        # A database host that does not answer fails a request (503, api/errors.py) in seconds, not minutes.
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Connections are kept (60 s, as on PostgreSQL): opening one (the file, the pragmas, Django's SQL functions)
        # and closing it cost more than the rest of an online read's request.
        # IMMEDIATE makes concurrent writers queue for the lock instead of failing mid-transaction.
        config["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
        # A file, not memory, so a worker process started by a test sees the same test database.
        config["TEST"].setdefault("NAME", str(Path(config["NAME"]).with_name("test-" + Path(config["NAME"]).name)))
    return config


DATABASES = {"default": database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# Bounded request size: a whole catalog (932 features) is about 300 KB of JSON.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("FCC_MAX_REQUEST_BYTES", str(5 * 1024 * 1024)))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "api.schema.ConsoleAutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Feature Catalog Console API",
    "DESCRIPTION": "Catalog, change requests, approvals and provisioning for the market-regime feature store.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.retry_after_header"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI assets served by the console itself (no CDN: it works offline).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "ChangeRequestState": "catalog.models.ChangeRequest.State",
        "FeatureStatus": "catalog.models.Feature.Status",
        "ProvisioningRunState": "provisioning.models.ProvisioningRun.State",
        "BackfillState": "provisioning.models.Backfill.State",
        "EnvironmentName": "catalog.models.Environment.Name",
        "BackfillPartitionStatus": "provisioning.models.BackfillPartition.Status",
    },
}

# Celery: Redis (or any broker URL) when CELERY_BROKER_URL is set; otherwise a filesystem broker under
# DATA_DIR that needs no server. Tasks always run in a worker process; eager mode is for unit tests only.
_broker_dir = DATA_DIR / "broker"
# The filesystem URL names a host only so that kombu does not log a warning about its absence.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("out", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
    }
else:
    # A task not acknowledged within the visibility timeout is delivered again (acks_late, see workers/); a
    # second delivery of a task still running does nothing (its claim is a compare-and-set). A message a worker
    # had received when the broker went away is delivered again after this timeout: workers look for such
    # messages every 10 s (kombu's default is every tenth 10 s tick, so up to 100 s more), and a worker killed
    # while it looked holds the lock on looking for a minute, not five. The socket options make a dead broker
    # connection noticed in seconds, not when the kernel gives up on it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("FCC_BROKER_VISIBILITY_TIMEOUT", "300")),
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 60,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
# Workers ride out a broker outage of any length: they reconnect forever (with backoff) instead of exiting
# after 100 attempts; a running task keeps running and its late acknowledgement is redelivered at worst.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "provisioning"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ALWAYS_EAGER = False

# The Google Cloud project the environments provision into (story 2.1).
FCC_GCP_PROJECT = os.environ.get("FCC_GCP_PROJECT", "arched-bot-269016")
FCC_GCP_REGION = os.environ.get("FCC_GCP_REGION", "us-central1")
FCC_SPECS_DIR = Path(os.environ.get("FCC_SPECS_DIR", BASE_DIR / "catalog" / "specs"))

# Cost model inputs (provisioning/costs.py). Prices in USD; check current regional prices before quoting.
FCC_PRICES = {
    "bigquery_active_storage_gib_month": 0.02,
    "bigquery_long_term_storage_gib_month": 0.01,
    "bigquery_on_demand_tib_scanned": 6.25,
    "bigtable_node_hour": 0.65,
}
# Rows a component table gains per trading day: 4 symbols x 375 minutes x about 4 expiries in play.
FCC_ROWS_PER_TRADING_DAY = int(os.environ.get("FCC_ROWS_PER_TRADING_DAY", "6000"))
FCC_TRADING_DAYS_PER_MONTH = 21

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "config.logging.ContextFilter"}},
    "formatters": {"json": {"()": "config.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery": {"level": "INFO"},
    },
}
# Seven years of trading days (story 2.1: 45 GB over 7 years of Parquet).
FCC_HISTORY_TRADING_DAYS = int(os.environ.get("FCC_HISTORY_TRADING_DAYS", "1750"))
# Vertex AI online serving (Bigtable), story 2.1: autoscaling min 2, max 10 nodes, 70 % CPU target.
FCC_ONLINE_MIN_NODES = 2
FCC_ONLINE_MAX_NODES = 10
FCC_ONLINE_CPU_TARGET = 70
CELERY_TASK_ROUTES = {"provisioning.*": {"queue": "provisioning"}}

# Store backends: embedded defaults for every environment, overridden per environment with FCC_STORES, a JSON
# object such as {"prod": {"offline": "bigquery", "online": "vertex"}}.
FCC_OFFLINE_STORE = os.environ.get("FCC_OFFLINE_STORE", "duckdb")
FCC_ONLINE_STORE = os.environ.get("FCC_ONLINE_STORE", "local")
FCC_STORES: dict[str, dict[str, Any]] = json.loads(os.environ.get("FCC_STORES", "{}"))
# The embedded online store keeps its values in Redis instead of SQLite when this is set.
REDIS_URL = os.environ.get("REDIS_URL", "")
# Provisioning runs: transient store errors are retried this many times per step, with exponential backoff.
FCC_STEP_MAX_ATTEMPTS = int(os.environ.get("FCC_STEP_MAX_ATTEMPTS", "5"))
FCC_STEP_BACKOFF_SECONDS = float(os.environ.get("FCC_STEP_BACKOFF_SECONDS", "0.5"))
# A running run, backfill or training dataset job whose worker has not beaten its heart for this long is freed
# by the reaper.
FCC_RUN_STALE_SECONDS = int(os.environ.get("FCC_RUN_STALE_SECONDS", "120"))
# Entity rows a training dataset job computes and writes at a time: its memory is one batch's features.
FCC_TRAINING_ROWS_PER_BATCH = int(os.environ.get("FCC_TRAINING_ROWS_PER_BATCH", "32768"))
# glibc's mmap threshold in workers (provisioning/memory.py), checked here so a bad value stops start-up with its
# reason; the worker reads it from the environment itself, before Django is set up.
FCC_MALLOC_MMAP_THRESHOLD = mmap_threshold_wanted()
# The point-in-time retrieval's memory budget and readers (provisioning/memory.py), checked here for the same reason.
FCC_RETRIEVAL_MEMORY_BYTES = retrieval_memory_budget()
FCC_RETRIEVAL_READERS = retrieval_readers()
_REAPER_SECONDS = float(os.environ.get("FCC_REAPER_SECONDS", "60"))
_ONLINE_SYNC_SECONDS = float(os.environ.get("FCC_ONLINE_SYNC_SECONDS", "60"))
_DRIFT_SECONDS = float(os.environ.get("FCC_DRIFT_SECONDS", "900"))
# Each periodic task expires after its own interval: ticks queued behind a long run (or left in the queue by a
# dead worker) are dropped instead of all running back to back, each re-sending the same runs.
CELERY_BEAT_SCHEDULE = {
    "reap-stale-provisioning-runs": {
        "task": "provisioning.reap_stale_runs",
        "schedule": _REAPER_SECONDS,
        "options": {"expires": _REAPER_SECONDS},
    },
    "online-sync": {
        "task": "provisioning.online_sync_all",
        "schedule": _ONLINE_SYNC_SECONDS,
        "options": {"expires": _ONLINE_SYNC_SECONDS},
    },
    "detect-drift": {
        "task": "provisioning.drift_detect_all",
        "schedule": _DRIFT_SECONDS,
        "options": {"expires": _DRIFT_SECONDS},
    },
}
# Backfills: where breaking changes' backfills read Parquet from (the story: gs://vertex-mr-data/ in production),
# and how many partitions one job replaces (BigQuery lets a job modify at most 4,000).
FCC_PARQUET_ROOT = os.environ.get("FCC_PARQUET_ROOT", str(DATA_DIR / "parquet"))
# Local directories a requested backfill may read besides FCC_PARQUET_ROOT (comma-separated).
FCC_BACKFILL_SOURCE_ROOTS = [p.strip() for p in os.environ.get("FCC_BACKFILL_SOURCE_ROOTS", "").split(",") if p.strip()]
FCC_BACKFILL_PARTITIONS_PER_JOB = int(os.environ.get("FCC_BACKFILL_PARTITIONS_PER_JOB", "31"))

# Production hardening (`python manage.py check --deploy` passes with DJANGO_PRODUCTION=1 and a real secret key).
if env_bool("DJANGO_PRODUCTION", False):
    if SECRET_KEY.startswith("insecure-") or len(SECRET_KEY) < 50:
        raise RuntimeError("DJANGO_PRODUCTION=1 needs DJANGO_SECRET_KEY: at least 50 random characters")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
