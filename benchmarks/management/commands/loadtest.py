"""`manage.py loadtest`: the load benchmark on a throw-away stack on loopback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from benchmarks.loadtest import run_load


class Command(BaseCommand):
    help = "Search and upload from many concurrent clients against 127.0.0.1 for a fixed time; report errors and latency."

    def add_arguments(self, parser: Any) -> None:
        default = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "leeds-butterfly" / "images"
        parser.add_argument("dataset", nargs="?", type=Path, default=default, help="a folder of photos")
        parser.add_argument("--search-clients", type=int, default=50)
        parser.add_argument("--upload-clients", type=int, default=5)
        parser.add_argument("--duration", type=float, default=60.0, help="seconds")
        parser.add_argument("--seed-catalog", type=int, default=40, help="photos in the catalog before the load starts")
        parser.add_argument(
            "--hostile",
            action="store_true",
            help="instead: a few normal users alone, then beside slow sockets, an API flood, bombs and password guessing",
        )
        parser.add_argument("--normal-clients", type=int, default=5, help="with --hostile: normal users")
        parser.add_argument("--slow-sockets", type=int, default=200, help="with --hostile: slow connections")

    def handle(self, *args: Any, **opts: Any) -> None:
        photos = sorted(p for p in Path(opts["dataset"]).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if not photos:
            raise CommandError(f"no photos under {opts['dataset']}")
        if opts["hostile"]:
            self._hostile(photos, opts)
            return
        report = run_load(
            photos=photos,
            search_clients=opts["search_clients"],
            upload_clients=opts["upload_clients"],
            duration=opts["duration"],
            seed_catalog=opts["seed_catalog"],
            measure_forward=True,
        )
        self.stdout.write(report.summary())
        if report.errors or report.ready != len(report.uploaded_ids):
            sys.exit(1)

    def _hostile(self, photos: list[Path], opts: dict[str, Any]) -> None:
        # Dev tooling: the bombs are the test suite's hostile files.
        from benchmarks.hostile import run_hostile
        from tests.support import hostile_uploads as h

        bombs = [
            ("webp-7000.webp", h.webp_lossless_claiming(7000, 7000)),
            ("png16-7000.png", h.png_deep_claiming(7000, 7000)),
            ("float-7000.tif", h.tiff_float_claiming(7000, 7000)),
            ("rle-7000.bmp", h.bmp_rle_claiming(7000, 7000)),
        ]
        report = run_hostile(
            photos=photos,
            bombs=bombs,
            normal_clients=opts["normal_clients"],
            duration=opts["duration"],
            slow_sockets=opts["slow_sockets"],
        )
        self.stdout.write(report.summary())
        if report.calm.errors or report.hostile.errors:
            sys.exit(1)
