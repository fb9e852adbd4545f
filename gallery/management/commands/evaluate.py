"""Retrieval quality on a labelled folder, every image used as a query (leave-one-out)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery import pipeline
from gallery.vision.metrics import evaluate_rankings, similarity_matrix
from gallery.vision.preprocess import ImageDecodeError
from gallery.vision.reduction import fit_pca


def _csv_ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


class Command(BaseCommand):
    help = "Print mAP and precision@k of similarity search on a labelled folder (class per sub-folder, or --labels CSV)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--labels", type=Path, help="CSV of filename,label")
        parser.add_argument(
            "--pca", type=_csv_ints, default=None, help="PCA sizes to compare, 0 = none (default: 0 and the configured size)"
        )
        parser.add_argument("--metrics", default="cosine", help="comma-separated: cosine,euclidean,inner_product")
        parser.add_argument("--whiten", action="store_true", help="also evaluate whitened PCA")
        parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        from gallery.vision.datasets import read_labels

        try:
            pairs = read_labels(opts["directory"], opts["labels"])
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if len({label for _, label in pairs}) < 2:
            raise CommandError("need at least two labelled classes")
        backbone = pipeline.current_backbone()
        images, labels = [], []
        for path, label in tqdm(pairs, desc="decode", disable=opts["no_progress"] or opts["json"]):
            try:
                images.append(pipeline.decode(path.read_bytes()).image)
                labels.append(label)
            except ImageDecodeError as exc:
                self.stderr.write(f"skipping {path}: {exc}")
        started = time.perf_counter()
        x = np.concatenate(
            [
                pipeline.embed_images(images[i : i + 64])
                for i in tqdm(range(0, len(images), 64), desc="embed", disable=opts["no_progress"] or opts["json"])
            ]
        )
        embed_seconds = time.perf_counter() - started
        y = np.asarray(labels)
        conf = settings.IMAGESEARCH
        pcas = opts["pca"] if opts["pca"] is not None else [0, conf["PCA_DIMS"]]
        metrics = [m.strip() for m in opts["metrics"].split(",") if m.strip()]
        rows = []
        for dims in pcas:
            for whiten in (False, True) if (opts["whiten"] and dims) else (False,):
                z = fit_pca(x, dims=dims, whiten=whiten).transform(x) if dims else x
                for metric in metrics:
                    scores, larger = similarity_matrix(z, metric=metric)
                    scored = evaluate_rankings(scores, y, larger_is_better=larger)
                    rows.append(
                        {
                            "pca": dims or None,
                            "whiten": whiten,
                            "metric": metric,
                            "map": scored.map,
                            **{f"p@{k}": v for k, v in scored.precision_at.items()},
                            **{f"r@{k}": v for k, v in scored.recall_at.items()},
                        }
                    )
        default = next(
            (r for r in rows if r["pca"] == conf["PCA_DIMS"] and not r["whiten"] and r["metric"] == conf["DEFAULT_METRIC"]),
            rows[0],
        )
        report = {
            "backbone": backbone.name,
            "images": len(images),
            "classes": len(set(labels)),
            "embed_ms_per_image": 1000 * embed_seconds / max(len(images), 1),
            "rows": rows,
            "default": default,
        }
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2))
            return
        self.stdout.write(
            f"{len(images)} images, {len(set(labels))} classes, backbone {backbone.name}, "
            f"{report['embed_ms_per_image']:.1f} ms/image to embed"
        )
        self.stdout.write(f"{'PCA':>6} {'whiten':>6} {'metric':>14} {'mAP':>7} {'P@1':>7} {'P@10':>7} {'R@10':>7}")
        for r in rows:
            self.stdout.write(
                f"{(r['pca'] or 'none')!s:>6} {('yes' if r['whiten'] else 'no'):>6} {r['metric']:>14} "
                f"{r['map']:7.3f} {r['p@1']:7.3f} {r['p@10']:7.3f} {r['r@10']:7.3f}"
            )
        self.stdout.write(
            f"mAP {default['map']:.3f}, precision@10 {default['p@10']:.3f} "
            f"(product default: PCA-{default['pca'] or 'none'}, {default['metric']})"
        )
