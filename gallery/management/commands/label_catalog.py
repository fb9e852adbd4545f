"""Label the existing catalog with ImageNet classes for words search."""

from __future__ import annotations

from typing import Any

from ._catalog_job import CatalogJobCommand


class Command(CatalogJobCommand):
    help = (
        "Store the top ImageNet labels of every ready image that has none yet (images embedded "
        "before words search existed); resumable: run it again after a crash. New uploads are "
        "labelled by the worker in the same forward pass as their embedding."
    )
    batched = True
    kind = "labels"

    def handle(self, *args: Any, **opts: Any) -> None:
        self.start(foreground=opts["foreground"], batch_size=opts["batch_size"])
