from django.apps import AppConfig


class GalleryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gallery"
    verbose_name = "Image gallery"

    def ready(self) -> None:
        from . import wiring
        from .monitoring import worker

        wiring.connect(self)
        worker.connect()
