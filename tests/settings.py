"""Test settings: the product's settings with the offline backbone and eager tasks."""

import os

os.environ.setdefault("IMAGESEARCH_BACKBONE", "efficientnet_lite0")

from imagesearch.settings import *  # noqa: F403
from imagesearch.settings import IMAGESEARCH

CELERY_TASK_ALWAYS_EAGER = True
CELERY_BROKER_URL = "memory://"
IMAGESEARCH = {
    **IMAGESEARCH,
    "PCA_MIN_IMAGES": 12,
    "PCA_DIMS": 8,
    # Tests of the limiter set their own rates.
    "RATE_LIMITS": {"search": "0", "upload": "0", "login": "0"},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
