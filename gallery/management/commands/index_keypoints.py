"""Store the keypoints of the existing catalog for copy scans."""

from __future__ import annotations

from typing import Any

from ._catalog_job import CatalogJobCommand


class Command(CatalogJobCommand):
    help = (
        "Store the SIFT keypoints of every ready image that has none yet (images uploaded "
        "before copy scans used them), so that a newly registered work finds its crops, small "
        "pastes and collages among them; resumable: run it again after a crash. New uploads "
        "get theirs from the worker's copy check."
    )
    batched = True
    kind = "keypoints"

    def handle(self, *args: Any, **opts: Any) -> None:
        self.start(foreground=opts["foreground"], batch_size=opts["batch_size"])
