"""Errors are data: every refusal the product makes carries a stable `code` (pages and the
API map codes, never message text), a message meant for people, and optional fields.

Codes in use, by error:
- ImageRejected: empty_file, too_large, not_an_image, too_many_pixels,
  too_large_to_decode, server_busy, duplicate (DuplicateImage)
- CatalogUnavailable: unavailable
- CurationError: invalid_tags, invalid_title, unknown_job, unknown_backbone,
  migration_running, already_in_use, backbone_unavailable, too_few_images, fit_skipped,
  not_in_group, unknown_action
- WorkRejected: missing_fields, not_an_image (and the decode codes), already_registered
- DecisionRejected: unknown_action, note_required, hide_needs_confirm, gone, stale, not_allowed
- BackupRejected: backup_dir_not_empty, no_manifest, bad_manifest, unsafe_path,
  missing_file, checksum_mismatch, wrong_database, unknown_migrations, target_not_empty,
  tools_missing, dump_failed, restore_failed, in_transaction
- SearchRejected: empty_query, query_too_long, unknown_words (with `suggestions`),
  labels_unavailable, invalid_box, box_outside_image, box_too_small, invalid_date
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gallery.catalog.models import Image


class ApplicationError(Exception):
    """A refusal with a stable code; `fields` carry what a client may need besides."""

    default_code = "invalid"

    def __init__(self, message: str, *, code: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.fields = fields


class ImageRejected(ApplicationError, ValueError):
    """An upload that cannot enter the catalog; nothing was stored."""

    default_code = "not_an_image"


class CatalogUnavailable(ApplicationError, RuntimeError):
    """The upload was fine but the server could not store it now (database busy, disk
    full); nothing was stored and the user may try again."""

    default_code = "unavailable"


class DuplicateImage(ImageRejected):
    """The same bytes are already in the catalog. The message names no image: pages and
    the API say which one only to those who may see it (`message_for`)."""

    def __init__(self, existing: Image):
        super().__init__("This photo is already in the catalog.", code="duplicate")
        self.existing = existing

    def message_for(self, *, may_see: bool) -> str:
        return f"This photo is already in the catalog as “{self.existing.display_title}”." if may_see else str(self)


class CurationError(ApplicationError, ValueError):
    """A curation request that cannot be carried out; the message is meant for the editor."""

    default_code = "invalid_request"


class WorkRejected(ApplicationError, ValueError):
    """A protected work that cannot be registered; the message is meant for the user."""

    default_code = "not_an_image"


class DecisionRejected(ApplicationError, ValueError):
    """A review action that cannot be applied; the message is meant for the reviewer."""


class BackupRejected(ApplicationError, RuntimeError):
    """A backup that cannot be taken or a restore that cannot be carried out; nothing was
    changed in the install. The message says what to do."""

    default_code = "bad_manifest"


class SearchRejected(ApplicationError, ValueError):
    """A search request that cannot be answered as asked (no words, unknown words, a bad
    box); the message is meant for the user and nothing was searched."""

    default_code = "invalid_search"
