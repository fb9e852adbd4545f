"""Settings for the image-search gallery.

Every value comes from an environment variable with an embedded default that runs the
whole product locally (SQLite, media on disk, an embedded Redis broker). Production sets
IMAGESEARCH_ENV=production, which requires DJANGO_SECRET_KEY and turns DEBUG off.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent

# TensorFlow's C++ banners and notices ("oneDNN custom operations are on", CPU feature
# lines) are INFO messages; they are read from the environment when TensorFlow is first
# imported, which is always after the settings. Warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


PRODUCTION = env("IMAGESEARCH_ENV", "development") == "production"
VAR_DIR = Path(env("IMAGESEARCH_VAR_DIR", str(BASE_DIR / "var")))

if PRODUCTION:
    SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
    if not SECRET_KEY:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when IMAGESEARCH_ENV=production")
else:
    SECRET_KEY = env("DJANGO_SECRET_KEY", "insecure-local-development-key-do-not-use-in-production")

DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)
ALLOWED_HOSTS = [h for h in env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "gallery",
]
# Dev/test tooling (evaluation, benchmarks, the live test stack, load tests): outside
# production, wherever the checkout has it; the container image leaves it out.
if not PRODUCTION and importlib.util.find_spec("benchmarks") is not None:
    INSTALLED_APPS += ["benchmarks"]

MIDDLEWARE = [
    # Outermost: a request id for every request, its access-log line and its latency.
    "gallery.monitoring.middleware.RequestLogMiddleware",
    # /healthz, /readyz and /metrics (for token and loopback clients) are answered before
    # the host check and the HTTPS redirect: probes and scrapers reach the container by
    # its internal name over plain HTTP.
    "gallery.monitoring.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Before anything reads the body (CSRF reads the form in process_view).
    "imagesearch.body_limits.RequestBodyLimitMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

# Content-Security-Policy (django-csp): scripts, styles, fonts and connections from this
# site only; no inline scripts (every page's script is a static file), no plugins, no
# framing. Inline style attributes stay allowed (the admin's thumbnails use them). A view
# may send a stricter policy of its own (the API's ReDoc page does).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

ROOT_URLCONF = "imagesearch.urls"
WSGI_APPLICATION = "imagesearch.wsgi.application"

# Widgets drawn with the same plain values are drawn once per process (gallery/web/renderers.py).
FORM_RENDERER = "gallery.web.renderers.MemoWidgetRenderer"

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
                "gallery.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # IMMEDIATE transactions take the write lock up front, so concurrent writers queue
    # instead of failing half-way; WAL lets readers run beside the writer.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": env_int("IMAGESEARCH_SQLITE_TIMEOUT", 30),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("DJANGO_STATIC_ROOT", str(VAR_DIR / "staticfiles")))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env("DJANGO_MEDIA_ROOT", str(VAR_DIR / "media")))
# Original uploads keep their EXIF/GPS metadata, so they live outside MEDIA_ROOT and no
# URL serves them; browsers get re-encoded, metadata-free copies from MEDIA_ROOT.
PRIVATE_MEDIA_ROOT = Path(env("IMAGESEARCH_PRIVATE_MEDIA_ROOT", str(VAR_DIR / "private")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "private": {"BACKEND": "gallery.storage.PrivateFileSystemStorage", "OPTIONS": {"location": str(PRIVATE_MEDIA_ROOT)}},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"


def cache_location(*, cache_url: str, broker_url: str, embedded_socket: Path) -> str:
    """The rate limiter's counter store, shared by every web process: DJANGO_CACHE_URL, else
    the broker's Redis (the embedded one that `manage.py serve` starts included), else ""."""
    if cache_url:
        return cache_url
    broker_url = broker_url or f"redis+socket://{embedded_socket}"
    if broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return ""


_CACHE_LOCATION = cache_location(
    cache_url=env("DJANGO_CACHE_URL"),
    broker_url=env("CELERY_BROKER_URL"),
    embedded_socket=VAR_DIR / "redis" / "redis.sock",  # EMBEDDED_REDIS_SOCKET, defined with Celery below
)
# Without Redis (a broker in memory) the counters are per process: fine for one process only.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": _CACHE_LOCATION,
        "KEY_PREFIX": "imagesearch",
        # An unreachable store fails fast; the limiter then lets requests through.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 2},
    }
    if _CACHE_LOCATION
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

MAX_UPLOAD_MB = env_int("IMAGESEARCH_MAX_UPLOAD_MB", 20)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("IMAGESEARCH_MAX_FILES_PER_UPLOAD", 50)
# How many photos each endpoint takes ("*": every path under it); a body may be that many
# files × MAX_UPLOAD_MB plus the form fields, every other path only the form fields
# (imagesearch/body_limits.py). The web server refuses anything larger while reading it.
REQUEST_BODY_FILES = {
    "/upload/": DATA_UPLOAD_MAX_NUMBER_FILES,
    "/search/": 1,
    "/api/v1/images/": 1,
    "/api/v1/search/": 1,
    "/copyright/works/new/": 1,
    "/admin/*": 1,
}

# ---------------------------------------------------------------- the web server
# waitress (imagesearch/webserver.py) reads every request whole in its I/O loop before a
# thread sees it; a connection that sends nothing for CLIENT_TIMEOUT seconds is closed.
WEB_SERVER = {
    # Processes sharing the port (0: one per core, at most 4); threads in each.
    "PROCESSES": env_int("IMAGESEARCH_WEB_PROCESSES", 0),
    "THREADS": env_int("IMAGESEARCH_WEB_THREADS", 8),
    "CLIENT_TIMEOUT": env_int("IMAGESEARCH_CLIENT_TIMEOUT", 30),
    # Bytes a second a request must average once it has taken longer than the timeout.
    "CLIENT_MIN_RATE": env_int("IMAGESEARCH_CLIENT_MIN_RATE", 500),
    "CONNECTION_LIMIT": env_int("IMAGESEARCH_CONNECTION_LIMIT", 1000),
    # The address of the reverse proxy whose X-Forwarded-For/-Proto are believed; from
    # any other peer those headers are removed before Django sees them.
    "TRUSTED_PROXY": env("IMAGESEARCH_TRUSTED_PROXY", ""),
}

# Quiet by default: one access-log line per request (`imagesearch.access`, carrying the
# request id that also follows the request's tasks into the worker), the product's own
# INFO lines, and third-party loaders only when they warn. IMAGESEARCH_LOG_FORMAT=json
# writes one JSON object per line for log shippers.
LOG_LEVEL = env("IMAGESEARCH_LOG_LEVEL", "INFO")
LOG_FORMAT = env("IMAGESEARCH_LOG_FORMAT", "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "gallery.monitoring.logs.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # faiss logs every CPU variant it tries to load; TensorFlow and absl their start-up notices.
        "faiss": {"level": "WARNING"},
        "tensorflow": {"level": "WARNING"},
        "absl": {"level": "WARNING"},
        "h5py": {"level": "WARNING"},
    },
}

# ---------------------------------------------------------------- monitoring
MONITORING = {
    # /metrics is served to a client sending `Authorization: Bearer <token>` (unset: no
    # token works), to staff signed in, and to loopback clients unless turned off.
    "METRICS_TOKEN": env("IMAGESEARCH_METRICS_TOKEN", ""),
    "METRICS_ALLOW_LOOPBACK": env_bool("IMAGESEARCH_METRICS_ALLOW_LOOPBACK", True),
    # Each Celery worker serves its own metrics on this port (0: off) and address, under
    # the same access rule; a second worker on one host whose port is taken goes on without.
    "WORKER_METRICS_PORT": env_int("IMAGESEARCH_WORKER_METRICS_PORT", 9101),
    "WORKER_METRICS_HOST": env("IMAGESEARCH_WORKER_METRICS_HOST", "127.0.0.1"),
    # /readyz answers from checks at most this old (cheap under a flood of probes).
    "READY_CACHE_SECONDS": float(env("IMAGESEARCH_READY_CACHE_SECONDS", "2")),
}

# ---------------------------------------------------------------- the product
IMAGESEARCH = {
    # auto | resnet50 | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2; auto takes
    # resnet50 when its weights load.
    "BACKBONE": env("IMAGESEARCH_BACKBONE", "auto"),
    # The exponent of the generalised-mean pooling of the network's last feature map
    # (1 = average pooling). New catalogs are embedded with it; an existing catalog keeps
    # the one it was embedded with until a re-embed (its vectors are stored by a name that
    # carries the exponent: efficientnet_lite0-gem2; a bare name is GeM-3). 2: the best
    # measured over the three development sets (Lite0 mean mAP 0.791 against 0.784 for GeM-3).
    "GEM_P": (GEM_P := float(env("IMAGESEARCH_GEM_P", "2"))),
    # Pool the map's centre region too (the map without its outer ring of cells), its unit
    # vector added to the whole map's: a photo's subject counts for more than its edges.
    # Part of the vectors' name (efficientnet_lite0-gem2-centre), so changing it is a re-embed.
    # On: better or level on all three development sets (Lite0 mean mAP 0.798 against 0.791;
    # grocery +0.020, caltech +0.004, butterflies -0.001).
    "CENTRE_REGION": env_bool("IMAGESEARCH_CENTRE_REGION", True),
    # A local Keras weights file for ResNet50 (no-top), for air-gapped installs.
    "RESNET50_WEIGHTS": env("IMAGESEARCH_RESNET50_WEIGHTS", ""),
    "MAX_UPLOAD_BYTES": MAX_UPLOAD_MB * 1024 * 1024,
    "MAX_PIXELS": env_int("IMAGESEARCH_MAX_PIXELS", 50_000_000),
    # The most memory one decode may take (computed from the header before decoding;
    # a file over it is refused), and how many decodes one process runs at once.
    "DECODE_MEMORY_MB": env_int("IMAGESEARCH_DECODE_MEMORY_MB", 256),
    "DECODE_CONCURRENCY": env_int("IMAGESEARCH_DECODE_CONCURRENCY", 2),
    "DECODE_WAIT_SECONDS": env_int("IMAGESEARCH_DECODE_WAIT_SECONDS", 30),
    "GRAYSCALE": env_bool("IMAGESEARCH_GRAYSCALE", False),
    "DENOISE": env_bool("IMAGESEARCH_DENOISE", False),
    "BATCH_SIZE": env_int("IMAGESEARCH_BATCH_SIZE", 32),
    # Query photos searched at the same moment share one forward pass: at most this many,
    # and under load a pass waits this long for more to arrive (an idle process never waits).
    "QUERY_BATCH_MAX": env_int("IMAGESEARCH_QUERY_BATCH_MAX", 16),
    "QUERY_BATCH_WINDOW_MS": float(env("IMAGESEARCH_QUERY_BATCH_WINDOW_MS", "4")),
    # onnx: query photos run on ONNX Runtime (a conversion of the same graph, used only if it
    # matches TensorFlow within 1e-4 at start); tensorflow: TensorFlow, as the catalog.
    "QUERY_RUNTIME": env("IMAGESEARCH_QUERY_RUNTIME", "onnx"),
    # Threads of a query photo's forward pass; 0: every core, or with several web
    # processes each process's share of them (the web server sets it for its processes).
    "QUERY_THREADS": env_int("IMAGESEARCH_QUERY_THREADS", 0),
    # The same for catalog photos' forward passes (imports, workers, re-embeds): vectors and
    # labels from one converted graph, used only if both match TensorFlow within 1e-4.
    "EMBED_RUNTIME": env("IMAGESEARCH_EMBED_RUNTIME", "onnx"),
    # Words search: how many ImageNet labels are kept per image, and how much of a
    # result's score comes from them (the rest is visual similarity to the best label hits).
    "LABELS_PER_IMAGE": env_int("IMAGESEARCH_LABELS_PER_IMAGE", 10),
    "WORDS_LABEL_WEIGHT": float(env("IMAGESEARCH_WORDS_LABEL_WEIGHT", "0.3")),
    # PCA is fitted once the catalog holds this many embeddings, and refitted whenever
    # the catalog has doubled since the last fit.
    "PCA_MIN_IMAGES": env_int("IMAGESEARCH_PCA_MIN_IMAGES", 200),
    "PCA_DIMS": env_int("IMAGESEARCH_PCA_DIMS", 100),
    "PCA_WHITEN": env_bool("IMAGESEARCH_PCA_WHITEN", False),
    "DEFAULT_METRIC": env("IMAGESEARCH_DEFAULT_METRIC", "cosine"),
    # Cosine re-ranking: database-side augmentation over each image's DBA_K nearest
    # neighbours and α-query expansion with the QE_K best matches (0 turns either off).
    "DBA_K": env_int("IMAGESEARCH_DBA_K", 5),
    "QE_K": env_int("IMAGESEARCH_QE_K", 5),
    "QE_ALPHA": float(env("IMAGESEARCH_QE_ALPHA", "3")),
    "DBA_MAX_VECTORS": env_int("IMAGESEARCH_DBA_MAX_VECTORS", 200_000),
    "RESULTS": env_int("IMAGESEARCH_RESULTS", 20),
    "GALLERY_PAGE_SIZE": env_int("IMAGESEARCH_GALLERY_PAGE_SIZE", 24),
    # A claim on an image older than this is treated as a crashed worker's.
    "STALE_PROCESSING_SECONDS": env_int("IMAGESEARCH_STALE_PROCESSING_SECONDS", 300),
    "SERVE_MEDIA": env_bool("IMAGESEARCH_SERVE_MEDIA", True),
    # The periodic sweep queues pending images at least this old (younger ones are
    # normally still on their way through the broker).
    "SWEEP_MIN_AGE_SECONDS": env_int("IMAGESEARCH_SWEEP_MIN_AGE_SECONDS", 30),
    # A waiting image whose task was sent this long ago, in a lane that has embedded nothing
    # for as long, is queued again (its task may have been lost). A moving lane needs no
    # help: each of its tasks also claims the oldest waiting images of the lane.
    "REQUEUE_AFTER_SECONDS": {
        "interactive": env_int("IMAGESEARCH_REQUEUE_AFTER_SECONDS", 120),
        "bulk": env_int("IMAGESEARCH_BULK_REQUEUE_AFTER_SECONDS", 600),
    },
    # Uploading needs an account unless this is on.
    "ALLOW_ANONYMOUS_UPLOADS": env_bool("IMAGESEARCH_ALLOW_ANONYMOUS_UPLOADS", False),
    # Members of this group (and superusers) review copyright matches.
    "COPYRIGHT_GROUP": env("IMAGESEARCH_COPYRIGHT_GROUP", "Copyright staff"),
    # One policy for pages and API (gallery/ratelimit.py). Requests per client (signed-in
    # user, else address) and period; "0" turns one off. `login` counts sign-in attempts per
    # address and per account tried.
    "RATE_LIMITS": {
        "search": env("IMAGESEARCH_RATE_SEARCH", "60/m"),
        # Suggestions as one types: a request per keystroke, cheap (no photo, no database).
        "suggest": env("IMAGESEARCH_RATE_SUGGEST", "300/m"),
        "upload": env("IMAGESEARCH_RATE_UPLOAD", "30/m"),
        "login": env("IMAGESEARCH_RATE_LOGIN", "10/m"),
    },
    # Expensive requests running at once per client (search by photo, upload); 0 = no cap.
    # A slot a crashed request never gave back frees itself after this many seconds.
    "IN_FLIGHT": {
        "search": env_int("IMAGESEARCH_IN_FLIGHT_SEARCH", 2),
        "upload": env_int("IMAGESEARCH_IN_FLIGHT_UPLOAD", 2),
    },
    "IN_FLIGHT_TTL_SECONDS": env_int("IMAGESEARCH_IN_FLIGHT_TTL_SECONDS", 120),
    # Sign-in back-off: after the free failures (per account tried / per address) each
    # further failure doubles the wait from BACKOFF_SECONDS up to the cap; 0 turns it off.
    # Failures are forgotten FAILURE_MEMORY_SECONDS after the last; a success clears the account's.
    "SIGN_IN": {
        "FREE_FAILURES_PER_ACCOUNT": env_int("IMAGESEARCH_SIGN_IN_FREE_FAILURES", 5),
        "FREE_FAILURES_PER_ADDRESS": env_int("IMAGESEARCH_SIGN_IN_FREE_FAILURES_PER_ADDRESS", 20),
        "BACKOFF_SECONDS": env_int("IMAGESEARCH_SIGN_IN_BACKOFF_SECONDS", 2),
        "BACKOFF_MAX_SECONDS": env_int("IMAGESEARCH_SIGN_IN_BACKOFF_MAX_SECONDS", 900),
        "FAILURE_MEMORY_SECONDS": env_int("IMAGESEARCH_SIGN_IN_FAILURE_MEMORY_SECONDS", 3600),
    },
    "RATE_LIMIT_CACHE": "default",
    # Behind a reverse proxy that sets X-Forwarded-For, count by its first address.
    "TRUST_X_FORWARDED_FOR": env_bool("IMAGESEARCH_TRUST_X_FORWARDED_FOR", False),
    # ---- scale
    # memory: each web process searches its own index (exact, plus faiss above
    # ANN_THRESHOLD); pgvector: search is SQL on PostgreSQL (PCA spaces; memory otherwise).
    "SEARCH_BACKEND": env("IMAGESEARCH_SEARCH_BACKEND", "memory"),
    # The in-memory index turns approximate (faiss) for cosine at this many vectors; at
    # the default, database-side augmentation (DBA_MAX_VECTORS) is already off.
    "ANN_THRESHOLD": env_int("IMAGESEARCH_ANN_THRESHOLD", 200_000),
    "ANN_KIND": env("IMAGESEARCH_ANN_KIND", "hnsw"),
    "ANN_HNSW_M": env_int("IMAGESEARCH_ANN_HNSW_M", 32),
    "ANN_EF_CONSTRUCTION": env_int("IMAGESEARCH_ANN_EF_CONSTRUCTION", 80),
    "ANN_EF_SEARCH": env_int("IMAGESEARCH_ANN_EF_SEARCH", 128),
    "ANN_BACKGROUND": env_bool("IMAGESEARCH_ANN_BACKGROUND", True),
    # Catalog changes are re-read for this long (a transaction committing late), and the
    # index is recounted against the database this often.
    "INDEX_CHANGE_WINDOW_SECONDS": env_int("IMAGESEARCH_INDEX_CHANGE_WINDOW_SECONDS", 30),
    "INDEX_RECHECK_SECONDS": env_int("IMAGESEARCH_INDEX_RECHECK_SECONDS", 10),
    # Change-log entries older than this are deleted by the periodic prune (far beyond the
    # window above: an index that fell behind the pruned entries reloads in full).
    "CHANGE_LOG_RETENTION_SECONDS": env_int("IMAGESEARCH_CHANGE_LOG_RETENTION_SECONDS", 3600),
    "PGVECTOR_EF_SEARCH": env_int("IMAGESEARCH_PGVECTOR_EF_SEARCH", 100),
    # With augmentation on, pgvector search re-ranks this many nearest candidates (by plain
    # cosine) with the same maths as the in-memory index (see docs/architecture.md).
    "PGVECTOR_RERANK_CANDIDATES": env_int("IMAGESEARCH_PGVECTOR_RERANK_CANDIDATES", 100),
    # ---- operations (gallery/operations/): backups, `manage.py doctor`, the operations page
    # Where pg_dump/pg_restore live; unset: the pgserver package's bundled ones, else the PATH.
    "PG_BIN": env("IMAGESEARCH_PG_BIN", ""),
    "OPERATIONS": {
        # The broker and the workers must answer within this (the page stays fast without them).
        "BROKER_TIMEOUT_SECONDS": float(env("IMAGESEARCH_OPS_BROKER_TIMEOUT", "1")),
        # Images waiting and nothing embedded for this long: the workers are stuck or gone.
        "STALL_MINUTES": env_int("IMAGESEARCH_OPS_STALL_MINUTES", 10),
        "DISK_WARN_MB": env_int("IMAGESEARCH_OPS_DISK_WARN_MB", 2048),
        "DISK_FAIL_MB": env_int("IMAGESEARCH_OPS_DISK_FAIL_MB", 200),
        "BACKUP_MAX_AGE_HOURS": env_int("IMAGESEARCH_OPS_BACKUP_MAX_AGE_HOURS", 26),
    },
}
# The exponent is written into the vectors' name (six significant digits at most).
if not 1.0 <= GEM_P <= 8.0 or float(f"{GEM_P:g}") != GEM_P:
    raise ImproperlyConfigured("IMAGESEARCH_GEM_P must be a number from 1 (average pooling) to 8, e.g. 2 or 2.5")
for _runtime in ("QUERY_RUNTIME", "EMBED_RUNTIME"):
    if IMAGESEARCH[_runtime] not in ("onnx", "tensorflow"):
        raise ImproperlyConfigured(f"IMAGESEARCH_{_runtime} must be onnx or tensorflow")

# ---------------------------------------------------------------- Celery
# Unset means the embedded Redis that `manage.py serve` starts on a unix socket.
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis" / "redis.sock"
CELERY_BROKER_URL = env("CELERY_BROKER_URL", f"redis+socket://{EMBEDDED_REDIS_SOCKET}")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 600),
    # Poll the worker's queues in the order given (`-Q interactive,bulk`), not round robin:
    # a waiting upload is always taken before the next bulk batch.
    "queue_order_strategy": "priority",
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
# Two lanes: uploads from the web page and the API go to `interactive`; imports, re-embedding,
# refits, catalog scans and log pruning go to `bulk`. A worker started without -Q consumes
# both, interactive first (CELERY_TASK_QUEUES order).
CELERY_TASK_DEFAULT_QUEUE = "interactive"
CELERY_TASK_QUEUES = [Queue("interactive"), Queue("bulk")]
CELERY_TASK_ROUTES = {
    "gallery.fit_reduction": {"queue": "bulk"},
    "gallery.run_catalog_job": {"queue": "bulk"},
    "gallery.scan_catalog_for_work": {"queue": "bulk"},
    "gallery.prune_catalog_changes": {"queue": "bulk"},
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

if PRODUCTION:
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
CELERY_BEAT_SCHEDULE = {
    "sweep-waiting-images": {"task": "gallery.sweep_waiting_images", "schedule": env_int("IMAGESEARCH_SWEEP_SECONDS", 60)},
    "prune-catalog-changes": {
        "task": "gallery.prune_catalog_changes",
        "schedule": env_int("IMAGESEARCH_CHANGE_LOG_PRUNE_SECONDS", 600),
    },
}

# ---------------------------------------------------------------- copyright monitoring
COPYRIGHT = {
    # A match scoring at least this is queued for review. Chosen from the precision /
    # recall curve of `manage.py evaluate_copies`; the review page shows what it implies.
    "THRESHOLD": float(env("IMAGESEARCH_COPY_THRESHOLD", "0.45")),
    # Precision and recall measured at that threshold on the attack suite (leeds-butterfly).
    "MEASURED_PRECISION": float(env("IMAGESEARCH_COPY_MEASURED_PRECISION", "1.0")),
    "MEASURED_RECALL": float(env("IMAGESEARCH_COPY_MEASURED_RECALL", "0.993")),
    # A newly registered work is checked against the catalog images its keypoints vote
    # for most (SCAN_VOTED) and the nearest by stored embedding (SCAN_CANDIDATES). Each is
    # screened on its stored keypoints and hash: verified in full when this many
    # keypoints agree on one geometry or the hashes are close, and the SCAN_ALWAYS_VERIFIED
    # nearest by embedding in any case.
    "SCAN_CANDIDATES": env_int("IMAGESEARCH_COPY_SCAN_CANDIDATES", 40),
    "SCAN_VOTED": env_int("IMAGESEARCH_COPY_SCAN_VOTED", 20),
    "SCAN_SCREEN_INLIERS": env_int("IMAGESEARCH_COPY_SCAN_SCREEN_INLIERS", 6),
    "SCAN_ALWAYS_VERIFIED": env_int("IMAGESEARCH_COPY_SCAN_ALWAYS_VERIFIED", 5),
    # Images a scan checks in full at a time (threads of the worker that runs the scan).
    "SCAN_THREADS": env_int("IMAGESEARCH_COPY_SCAN_THREADS", 2),
    "PAGE_SIZE": env_int("IMAGESEARCH_COPY_PAGE_SIZE", 25),
    # Where each process saves the register's searchable parts (CNN vectors, hashes, the
    # compressed keypoint index) so that the next one maps them instead of rebuilding
    # them; saved again once this many works were added since. Empty: never saved.
    "INDEX_DIR": env("IMAGESEARCH_COPY_INDEX_DIR", str(VAR_DIR / "copy-index")),
    "INDEX_SAVE_EVERY": env_int("IMAGESEARCH_COPY_INDEX_SAVE_EVERY", 200),
}

# ---------------------------------------------------------------- JSON API
INSTALLED_APPS += ["csp"]
INSTALLED_APPS += ["rest_framework", "rest_framework.authtoken", "drf_spectacular", "drf_spectacular_sidecar"]
REST_FRAMEWORK = {
    # Token first: an unauthenticated request gets 401 with `WWW-Authenticate: Token`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
        "gallery.api.parsers.BoundedJSONParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "gallery.api.views.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Image search API",
    "DESCRIPTION": "Search the catalog by photo or by catalog image, upload photos, follow their analysis.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # The docs page works offline: its assets are served from drf-spectacular-sidecar.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
