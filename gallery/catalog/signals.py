"""What the catalog tells other domains, without knowing who listens."""

from django.dispatch import Signal

# Sent by the embedding task once images became ready (searchable). Arguments:
# image_ids (list[int]) and lane (the Celery queue their work travels on).
images_ready = Signal()
