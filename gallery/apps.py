from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _on_connection(sender: Any, connection: Any, **_: Any) -> None:
    from .vector_field import register_pgvector

    register_pgvector(connection)


class GalleryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gallery"
    verbose_name = "Image gallery"

    def ready(self) -> None:
        connection_created.connect(_on_connection, dispatch_uid="gallery.register_pgvector")
