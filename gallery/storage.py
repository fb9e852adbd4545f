"""Where uploads live: originals in a private location that no URL serves, and the
re-encoded, metadata-free display copies and thumbnails in the public media storage."""

from __future__ import annotations

from typing import IO, Any

from django.core.files.storage import FileSystemStorage, storages
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.functional import LazyObject, empty


class PrivateFileSystemStorage(FileSystemStorage):
    """A file system storage whose files have no URL: originals keep their EXIF and GPS
    metadata, so they are never handed to a browser."""

    def url(self, name: str | None) -> str:
        raise ValueError("Private files have no public URL.")


class _PrivateStorage(LazyObject):
    def _setup(self) -> None:
        self._wrapped = storages["private"]


private_storage: Any = _PrivateStorage()


def get_private_storage() -> Any:
    """The storage of original uploads (the `private` entry of STORAGES)."""
    return private_storage


@receiver(setting_changed)
def _reset_private_storage(*, setting: str, **_: Any) -> None:
    if setting in ("STORAGES", "PRIVATE_MEDIA_ROOT"):
        private_storage._wrapped = empty


# A hidden image's display copy and thumbnail move from the public media into the private
# storage under this prefix (same name after it), so their old /media/ URLs stop answering.
WITHHELD_PREFIX = "withheld/"


def withheld_name(name: str) -> str:
    return WITHHELD_PREFIX + name


def picture_open(field: Any) -> IO[bytes] | None:
    """A display copy's or thumbnail's file, wherever it is now (withheld while its image
    is hidden, in the public media otherwise); None when it has no file."""
    if not (field and field.name):
        return None
    for storage, name in ((private_storage, withheld_name(field.name)), (field.storage, field.name)):
        try:
            return storage.open(name, "rb")  # type: ignore[no-any-return]
        except FileNotFoundError:
            continue
    return None
