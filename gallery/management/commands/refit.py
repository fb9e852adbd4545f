"""Refit the catalog's PCA in the background and switch to it atomically."""

from __future__ import annotations

from typing import Any

from ._catalog_job import CatalogJobCommand


class Command(CatalogJobCommand):
    help = "Fit a new PCA on the catalog's embeddings, project every image, then switch search to it."
    kind = "refit"

    def handle(self, *args: Any, **opts: Any) -> None:
        self.start(foreground=opts["foreground"])
