"""Copy-detection quality on a reproducible attack suite built from a folder of photos.

N photos become protected works; each gets one copy per transformation family; other
photos (edited the same ways, but not copies) are distractors. Near-duplicates inside
the folder are removed first, so that a photo and its re-crop are never scored as a
non-copy pair. The matcher and a pHash-only baseline answer the same queries.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from PIL import Image as PILImage
from PIL import ImageOps
from tqdm import tqdm

from benchmarks import attacks, copyeval
from gallery.catalog import pipeline
from gallery.vision import copydetect, localfeatures
from gallery.vision.datasets import find_images
from gallery.vision.phash import hamming, phash, phash_variants
from gallery.vision.preprocess import ImageDecodeError

# Near-duplicates: hashes this close, or this many keypoints in one geometry among the
# nearest photos by CNN similarity.
DUPLICATE_HASH_BITS = 10
DUPLICATE_INLIERS = 25
DUPLICATE_NEIGHBOURS = 5
# Precision and recall over all queries are printed at these thresholds (the curve the
# default threshold is chosen from).
CURVE_THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)


def _union_find_groups(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(a)] = root(b)
    return [root(i) for i in range(n)]


class Command(BaseCommand):
    help = "Recall@1, µAP and precision at the threshold of copy detection, per attack family, beside a pHash baseline."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--works", type=int, default=100)
        parser.add_argument("--distractors", type=int, default=500)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--threshold", type=float, default=None, help="default: the configured one")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        quiet = opts["no_progress"] or opts["json"]
        paths = find_images(opts["directory"])
        if opts["works"] < 1 or opts["distractors"] < 1:
            raise CommandError("--works and --distractors must be positive")
        photos: list[PILImage.Image] = []
        for p in tqdm(paths, desc="decode", disable=quiet):
            try:
                photos.append(pipeline.decode(p.read_bytes()).image)
            except (OSError, ImageDecodeError) as exc:
                self.stderr.write(f"skipping {p}: {exc}")
        backbone = pipeline.current_backbone()
        keep, removed = self._deduplicate(backbone, photos, quiet)
        need = opts["works"] + opts["distractors"]
        if len(keep) < need:
            raise CommandError(f"{len(keep)} distinct photos (after removing {removed} near-duplicates); {need} needed")
        rng = np.random.default_rng(opts["seed"])
        order = rng.permutation(keep)
        works = [photos[i] for i in order[: opts["works"]]]
        distractors = [photos[i] for i in order[opts["works"] : need]]
        backgrounds = [photos[i] for i in order[need:]] or distractors

        index = copydetect.CopyIndex()
        for i, im in enumerate(tqdm(works, desc="register works", disable=quiet)):
            index.add(i, copydetect.describe_work(backbone, im))
        work_hashes = np.array([phash(im) for im in works], dtype=np.uint64)

        queries: list[tuple[str, int, PILImage.Image]] = []  # (family or "", true work or -1, image)
        for i, im in enumerate(works):
            for family in attacks.ALL_FAMILIES:
                bg = backgrounds[int(rng.integers(len(backgrounds)))]
                queries.append((family, i, attacks.apply(family, im, rng, bg)))
        for j, im in enumerate(distractors):
            family = attacks.ALL_FAMILIES[j % len(attacks.ALL_FAMILIES)]
            bg = distractors[(j + 1) % len(distractors)]
            queries.append(("", -1, attacks.apply(family, im, rng, bg)))

        threshold = opts["threshold"] if opts["threshold"] is not None else settings.COPYRIGHT["THRESHOLD"]
        ours, base, cost = [], [], []
        for family, truth, im in tqdm(queries, desc="queries", disable=quiet):
            started = time.perf_counter()
            best = index.match(index.describe(backbone, im))[0]
            # as an upload is checked: a best candidate short of the threshold looked at again
            best = localfeatures.look_closer(
                index, backbone, im, best, threshold=threshold, work=functools.partial(works.__getitem__, best.work_id)
            )
            cost.append(time.perf_counter() - started)
            ours.append(copyeval.Prediction(family, best.work_id == truth, best.score))
            distance = hamming(work_hashes, phash(im))
            top = int(np.argmin(distance))
            base.append(copyeval.Prediction(family, top == truth, float(1 - distance[top] / 64)))

        base_threshold = copyeval.choose_threshold(base)
        report: dict[str, Any] = {
            "photos": len(photos),
            "near_duplicates_removed": removed,
            "works": len(works),
            "distractors": len(distractors),
            "copy_queries": len(queries) - len(distractors),
            "threshold": threshold,
            "threshold_for_precision_0.99": copyeval.choose_threshold(ours),
            "phash_threshold": base_threshold,
            "cost_ms": {"p50": 1000 * float(np.percentile(cost, 50)), "p95": 1000 * float(np.percentile(cost, 95))},
            "families": {},
            "curve": [],
        }
        copies = sum(1 for p in ours if p.family)
        scores = np.array([p.score for p in ours])
        correct = np.array([p.correct for p in ours])
        for t in CURVE_THRESHOLDS:
            precision, recall = copyeval.precision_recall_at(scores, correct, copies, t)
            report["curve"].append({"threshold": t, "precision": precision, "recall": recall})
        families: list[str | None] = [*attacks.ALL_FAMILIES, None]
        for group in families:
            name = group or "overall"
            a = copyeval.score_family(ours, group, threshold)
            b = copyeval.score_family(base, group, base_threshold)
            report["families"][name] = {"matcher": a.__dict__, "phash": b.__dict__}
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2))
            return
        self._print(report)

    def _deduplicate(self, backbone: copydetect.Backbone, photos: list[PILImage.Image], quiet: bool) -> tuple[list[int], int]:
        """Indices of photos to keep (one per near-duplicate group) and how many were dropped."""
        hashes = np.stack([phash_variants(im) for im in photos])
        vectors = np.concatenate(
            [pipeline.embed_images(photos[i : i + 64]) for i in tqdm(range(0, len(photos), 64), desc="dedupe", disable=quiet)]
        )
        mirrored = np.concatenate(
            [pipeline.embed_images([ImageOps.mirror(im) for im in photos[i : i + 64]]) for i in range(0, len(photos), 64)]
        )
        similar = np.maximum(vectors @ vectors.T, vectors @ mirrored.T)
        np.fill_diagonal(similar, -1)
        keypoints = [copydetect.sift_keypoints(im) for im in tqdm(photos, desc="keypoints", disable=quiet)]
        pairs: list[tuple[int, int]] = []
        for i in range(len(photos)):
            close = np.nonzero(
                np.minimum(hamming(hashes[:, 0], int(hashes[i, 0])), hamming(hashes[:, 1], int(hashes[i, 0])))
                <= DUPLICATE_HASH_BITS
            )[0]
            pairs += [(i, int(j)) for j in close if j != i]
            for j in np.argsort(-similar[i])[:DUPLICATE_NEIGHBOURS]:
                if copydetect.verify(keypoints[i], keypoints[int(j)]) >= DUPLICATE_INLIERS:
                    pairs.append((i, int(j)))
        groups = _union_find_groups(len(photos), pairs)
        seen: set[int] = set()
        keep = []
        for i, g in enumerate(groups):
            if g not in seen:
                seen.add(g)
                keep.append(i)
        return keep, len(photos) - len(keep)

    def _print(self, report: dict[str, Any]) -> None:
        w = self.stdout.write
        w(
            f"{report['photos']} photos, {report['near_duplicates_removed']} near-duplicates removed; "
            f"{report['works']} works, {report['copy_queries']} copies, {report['distractors']} distractors"
        )
        w(
            f"threshold {report['threshold']:.3f} (precision ≥ 0.99 from {report['threshold_for_precision_0.99']:.3f}); "
            f"pHash threshold {report['phash_threshold']:.3f}; matcher cost per query p50 {report['cost_ms']['p50']:.0f} ms, "
            f"p95 {report['cost_ms']['p95']:.0f} ms"
        )
        w(
            "overall precision / recall at threshold: "
            + ", ".join(f"{c['threshold']:.2f}: {c['precision']:.3f} / {c['recall']:.3f}" for c in report["curve"])
        )
        w(f"{'family':<14}{'R@1':>7}{'µAP':>7}{'P@thr':>7}{'R@thr':>7}   | pHash {'R@1':>6}{'µAP':>7}{'P@thr':>7}")
        for name, row in report["families"].items():
            a, b = row["matcher"], row["phash"]
            w(
                f"{name:<14}{a['recall_at_1']:>7.3f}{a['micro_ap']:>7.3f}{a['precision_at_threshold']:>7.3f}"
                f"{a['recall_at_threshold']:>7.3f}   |       {b['recall_at_1']:>6.3f}{b['micro_ap']:>7.3f}{b['precision_at_threshold']:>7.3f}"
            )
