"""Group the catalog's near-duplicates for review in the admin."""

from __future__ import annotations

from typing import Any

from ._catalog_job import CatalogJobCommand


class Command(CatalogJobCommand):
    help = "Find groups of near-duplicate images (similarity above IMAGESEARCH_NEAR_DUPLICATE_THRESHOLD)."
    kind = "neardup"

    def handle(self, *args: Any, **opts: Any) -> None:
        self.start(foreground=opts["foreground"])
