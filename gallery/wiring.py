"""Cross-domain reactions, wired in one place at start-up (GalleryConfig.ready):

- an image became ready → check it against the protected works (copyright), on its lane;
- migrations ran → the copyright reviewers' group exists (named by the setting);
- a database connection opened → pgvector's types are registered (PostgreSQL);
- a sign-in failed, at any door → it counts towards that account's and address's back-off;
- tags, or which images are published, changed → the cached list of tags in use is renewed.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.signals import connection_created
from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save

from gallery.catalog import tagcache


def _check_ready_images_for_copies(sender: Any, *, image_ids: list[int], lane: str, **_: Any) -> None:
    from gallery.copyright.tasks import match_upload

    for image_id in image_ids:
        match_upload.apply_async(args=[image_id], queue=lane)


def _ensure_reviewer_group(sender: Any, **_: Any) -> None:
    from gallery.copyright.services import copyright_group_ensure

    copyright_group_ensure()


def _register_pgvector(sender: Any, connection: Any, **_: Any) -> None:
    from gallery.vector_field import register_pgvector

    register_pgvector(connection)


def _tags_changed(sender: Any, **kwargs: Any) -> None:
    if kwargs.get("action", "post_").startswith("post_"):
        tagcache.changed()


def _image_saved(sender: Any, *, created: bool, update_fields: Any = None, **_: Any) -> None:
    """A whole-row save may change an image's visibility (an editor's form); a new image has
    no tags yet, and saves of named fields other than visibility (a worker's) cannot."""
    if not created and (update_fields is None or "visibility" in update_fields):
        tagcache.changed()


def connect(app_config: Any) -> None:
    from gallery.catalog.signals import images_ready
    from gallery.ratelimit import register_signal_handlers

    images_ready.connect(_check_ready_images_for_copies, dispatch_uid="gallery.ready_images_to_copyright")
    post_migrate.connect(_ensure_reviewer_group, sender=app_config, dispatch_uid="gallery.ensure_groups")
    connection_created.connect(_register_pgvector, dispatch_uid="gallery.register_pgvector")
    register_signal_handlers()
    from gallery.catalog.models import Image, Tag

    m2m_changed.connect(_tags_changed, sender=Tag.images.through, dispatch_uid="gallery.tags_changed")
    # (Deleting link rows directly sends no signal: `images_remove_tags` renews the list itself.)
    for model in (Tag, Image):
        post_delete.connect(_tags_changed, sender=model, dispatch_uid=f"gallery.tags_changed.{model.__name__}.delete")
    post_save.connect(_tags_changed, sender=Tag, dispatch_uid="gallery.tags_changed.Tag.save")
    post_save.connect(_image_saved, sender=Image, dispatch_uid="gallery.tags_changed.Image.save")
