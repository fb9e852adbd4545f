"""Test settings: the product's settings with the offline backbone and eager tasks."""

import os

os.environ.setdefault("IMAGESEARCH_BACKBONE", "efficientnet_lite0")
# Catalogs under test are stored under the bare network name (GeM-3 vectors of the whole
# map); the tests of the product's default pooling set it themselves.
os.environ.setdefault("IMAGESEARCH_GEM_P", "3")
os.environ.setdefault("IMAGESEARCH_CENTRE_REGION", "0")

from imagesearch.settings import *  # noqa: F403
from imagesearch.settings import IMAGESEARCH

CELERY_TASK_ALWAYS_EAGER = True
CELERY_BROKER_URL = "memory://"
IMAGESEARCH = {
    **IMAGESEARCH,
    "PCA_MIN_IMAGES": 12,
    "PCA_DIMS": 8,
    # Tests of the limiter turn on what they test.
    "RATE_LIMITS": {"search": "0", "upload": "0", "login": "0"},
    "IN_FLIGHT": {"search": 0, "upload": 0},
    "SIGN_IN": {
        "FREE_FAILURES_PER_ACCOUNT": 5,
        "FREE_FAILURES_PER_ADDRESS": 20,
        "BACKOFF_SECONDS": 0,
        "BACKOFF_MAX_SECONDS": 900,
        "FAILURE_MEMORY_SECONDS": 3600,
    },
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The limiter's counters in this process (the product's default is the broker's Redis).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
