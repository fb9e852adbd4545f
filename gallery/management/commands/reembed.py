"""Re-embed the catalog with another backbone, then switch search to it atomically."""

from __future__ import annotations

from typing import Any

from ._catalog_job import CatalogJobCommand


class Command(CatalogJobCommand):
    help = (
        "Compute every image's embedding with BACKBONE in the background (resumable: run it "
        "again after a crash), fit its PCA, switch search to it atomically, remove the old vectors."
    )
    batched = True
    kind = "reembed"

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument("--backbone", required=True)

    def handle(self, *args: Any, **opts: Any) -> None:
        self.start(backbone=opts["backbone"], foreground=opts["foreground"], batch_size=opts["batch_size"])
