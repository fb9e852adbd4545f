"""The Celery application; configuration comes from Django settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")

app = Celery("imagesearch")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Each domain keeps its tasks beside its services.
app.autodiscover_tasks(["gallery.catalog", "gallery.search", "gallery.curation", "gallery.copyright"])
