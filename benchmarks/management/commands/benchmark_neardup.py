"""Time and memory of the near-duplicate search on realistic vectors, with the 1M extrapolation."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from PIL import Image as PILImage
from sklearn.mixture import GaussianMixture

from gallery.catalog import pipeline
from gallery.vision.datasets import find_images
from gallery.vision.neardup import similar_pairs
from gallery.vision.reduction import fit_pca


class Command(BaseCommand):
    help = (
        "Embed real photos, fit PCA, fit a Gaussian mixture to the PCA vectors, sample N vectors from it "
        "(with planted near-copies), time the blockwise pair search and extrapolate to 1M."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("photos", type=Path, help="a folder of real photos, e.g. ../shared/datasets/leeds-butterfly")
        parser.add_argument("--n", type=int, default=100_000)
        parser.add_argument("--limit", type=int, default=400, help="photos to embed for the mixture")
        parser.add_argument("--dims", type=int, default=100)
        parser.add_argument("--components", type=int, default=10)
        parser.add_argument("--threshold", type=float, default=0.8)
        parser.add_argument("--planted", type=int, default=1000)
        parser.add_argument("--backbone", default="efficientnet_lite0")

    def handle(self, *args: Any, **opts: Any) -> None:
        paths = find_images(opts["photos"])[: opts["limit"]]
        if len(paths) < opts["dims"] + 1:
            raise CommandError(f"need more than {opts['dims']} photos, found {len(paths)}")
        start = time.perf_counter()
        pictures = [PILImage.open(p).convert("RGB") for p in paths]
        raw = pipeline.embed_images(pictures, backbone=pipeline.backbone_named(opts["backbone"]))
        reduced = fit_pca(raw, dims=opts["dims"]).transform(raw)
        self.stdout.write(f"embedded {len(paths)} photos and fitted PCA-{opts['dims']} in {time.perf_counter() - start:.1f} s")
        mixture = GaussianMixture(opts["components"], covariance_type="full", reg_covar=1e-4, random_state=0).fit(reduced)
        x, _ = mixture.sample(opts["n"])
        x = x.astype(np.float32)
        rng = np.random.default_rng(0)
        # Planted near-copies: a sampled vector plus noise of a tenth of the data's spread.
        sources = rng.choice(len(x) - opts["planted"], size=opts["planted"], replace=False)
        noise = rng.normal(scale=0.1 * float(x.std()), size=(opts["planted"], x.shape[1])).astype(np.float32)
        x[len(x) - opts["planted"] :] = x[sources] + noise
        planted_pairs = {(int(s), len(x) - opts["planted"] + k) for k, s in enumerate(sources)}
        n = len(x)
        scale = 1_000_000 / n
        modes = [("exact", n + 1), ("inverted-file", 0)] if n <= 200_000 else [("inverted-file", 0)]
        for name, approximate_above in modes:
            tracemalloc.start()
            start = time.perf_counter()
            i, j, _ = similar_pairs(x, threshold=opts["threshold"], approximate_above=approximate_above)
            seconds = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            found = planted_pairs & {(int(a), int(b)) for a, b in zip(i, j, strict=True)}
            growth, label = (scale**2, "N²") if name == "exact" else (scale**1.5, "about N·√N")
            self.stdout.write(
                f"{name}: N={n} d={x.shape[1]}: {seconds:.1f} s, peak working memory {peak / 2**20:.0f} MiB "
                f"(vectors {x.nbytes / 2**20:.0f} MiB), {len(i)} candidate pairs, "
                f"planted copies found {len(found)}/{len(planted_pairs)}; "
                f"extrapolated to 1M: {seconds * growth / 60:.1f} min (grows with {label}), "
                f"vectors {x.nbytes * scale / 2**20:.0f} MiB"
            )
