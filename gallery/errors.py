"""Errors are data: every refusal the product makes carries a stable `code` (pages and the
API map codes, never message text) and a message meant for people."""

from __future__ import annotations

from gallery.catalog.models import Image


class ImageRejected(ValueError):
    """An upload that cannot enter the catalog; the message is meant for the user, the
    code (when set) for programs."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class CatalogUnavailable(RuntimeError):
    """The upload was fine but the server could not store it now (database busy, disk
    full); nothing was stored and the user may try again."""


class DuplicateImage(ImageRejected):
    """The same bytes are already in the catalog. The message names no image: pages and
    the API say which one only to those who may see it (`message_for`)."""

    def __init__(self, existing: Image):
        super().__init__("This photo is already in the catalog.")
        self.existing = existing

    def message_for(self, *, may_see: bool) -> str:
        return f"This photo is already in the catalog as “{self.existing.display_title}”." if may_see else str(self)


class CurationError(ValueError):
    """A curation request that cannot be carried out; the message is meant for the editor."""


class WorkRejected(ValueError):
    """A protected work that cannot be registered; the message is meant for the user."""


class DecisionRejected(ValueError):
    """A review action that cannot be applied. `code` is stable (pages and the API map it);
    the message is meant for the reviewer."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
