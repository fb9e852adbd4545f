from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate


def _on_connection(sender: Any, connection: Any, **_: Any) -> None:
    from .vector_field import register_pgvector

    register_pgvector(connection)


def _ensure_groups(sender: Any, **_: Any) -> None:
    from .services import copyright_group_ensure

    copyright_group_ensure()


class GalleryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gallery"
    verbose_name = "Image gallery"

    def ready(self) -> None:
        connection_created.connect(_on_connection, dispatch_uid="gallery.register_pgvector")
        post_migrate.connect(_ensure_groups, sender=self, dispatch_uid="gallery.ensure_groups")
        from .ratelimit import register_signal_handlers

        register_signal_handlers()  # every failed sign-in counts towards the back-off
