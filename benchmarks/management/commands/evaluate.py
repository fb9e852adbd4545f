"""Retrieval quality on a labelled folder: the seed's evaluation and the product's pipeline.

Every image is a query against all others (leave-one-out), and/or the seed's split
(PCA fitted on 80% of each class, the other 20% as queries). One table covers pooling,
PCA size and whitening, metric and re-ranking; a report folder gets the CSV, a
precision-recall plot and a contact sheet of queries with their top results.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from PIL import Image as PILImage
from tqdm import tqdm

from benchmarks import variants
from benchmarks.metrics import KS, RECALL_LEVELS, RetrievalScores, evaluate_rankings
from benchmarks.variants import Variant
from gallery.catalog import pipeline
from gallery.vision.backbones import BACKBONES, gem_pool, l2_normalise
from gallery.vision.datasets import read_labels
from gallery.vision.index import Expansion, VectorIndex
from gallery.vision.preprocess import ImageDecodeError
from gallery.vision.reduction import fit_pca

METRICS = ("cosine", "euclidean", "inner_product")


@dataclass(frozen=True)
class Config:
    pooling: str  # gem | avg
    pca: int  # 0 = none
    whiten: bool
    metric: str
    rerank: str  # none | qe | dba | dba+qe

    @property
    def label(self) -> str:
        pca = f"PCA-{self.pca}{'w' if self.whiten else ''}" if self.pca else "raw"
        return f"{self.pooling}, {pca}, {self.metric}, {self.rerank}"


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _split(labels: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per class, 80% database and 20% queries (at least one query)."""
    rng = np.random.default_rng(seed)
    queries, database = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_query = max(1, round(0.2 * len(idx)))
        queries += idx[:n_query].tolist()
        database += idx[n_query:].tolist()
    return np.array(sorted(database)), np.array(sorted(queries))


def _expansion(rerank: str) -> Expansion:
    conf = settings.IMAGESEARCH
    return Expansion(
        dba_k=conf["DBA_K"] if "dba" in rerank else 0,
        qe_k=conf["QE_K"] if "qe" in rerank else 0,
        alpha=conf["QE_ALPHA"],
    )


def rank(config: Config, descriptors: dict[str, np.ndarray], labels: np.ndarray, mode: str) -> tuple[RetrievalScores, np.ndarray]:
    """Evaluate one configuration; returns the scores and the (queries × database) score matrix."""
    x = descriptors[config.pooling]
    if mode == "loo":
        db_idx = q_idx = np.arange(len(x))
    else:
        db_idx, q_idx = _split(labels)
    if config.pca:
        fitted = fit_pca(x[db_idx], dims=config.pca, whiten=config.whiten)
        db, q = fitted.transform(x[db_idx]), fitted.transform(x[q_idx])
    else:
        db, q = x[db_idx], x[q_idx]
    index = VectorIndex(db.shape[1], expansion=_expansion(config.rerank) if config.metric == "cosine" else None)
    index.add(np.arange(len(db)), db)
    rows, larger = [], True
    for i in range(len(q)):
        s, larger = index.scores(q[i], metric=config.metric, exclude=i if mode == "loo" else None)
        rows.append(s)
    scores = np.stack(rows)
    if mode == "loo":
        return evaluate_rankings(scores, labels, larger_is_better=larger), scores
    return evaluate_rankings(scores, labels[q_idx], db_labels=labels[db_idx], larger_is_better=larger), scores


class Command(BaseCommand):
    help = "Measure search quality on a labelled folder (class per sub-folder, or --labels CSV of filename,label)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directories", nargs="+", type=Path, help="labelled folders (several: one summary table)")
        parser.add_argument(
            "--labels", type=Path, help="CSV of filename,label (one folder); several folders use their labels.csv"
        )
        parser.add_argument("--backbones", type=_csv_list, default=[], help="backbones to compare (default: the configured one)")
        parser.add_argument("--modes", type=_csv_list, default=["loo", "split"], help="loo and/or split (default both)")
        parser.add_argument("--metrics", type=_csv_list, default=list(METRICS))
        parser.add_argument("--pca", type=_csv_list, default=["none", "64", "100", "128", "256"], help="PCA sizes; none = raw")
        parser.add_argument("--whiten", choices=["no", "yes", "both"], default="both")
        parser.add_argument("--report", type=Path, help="write CSV, precision-recall plot and contact sheet here")
        parser.add_argument("--timing-queries", type=int, default=30, help="queries timed end to end (embed + search)")
        parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument(
            "--words",
            action="store_true",
            help="words mode: search by each class name the lexicon knows (precision@10, mAP); lists those it does not",
        )
        parser.add_argument(
            "--broader-truth",
            type=Path,
            default=None,
            help="words mode: JSON {words: {word: [folders]}} of broader words (default: the Caltech-101 one in "
            "benchmarks/data when the folders match)",
        )
        parser.add_argument(
            "--label-weights", type=_csv_list, default=[], help="words mode: also these label weights (default: the setting)"
        )
        parser.add_argument("--regions", type=int, default=0, help="words mode: also this many 2x2 collages for region search")
        parser.add_argument(
            "--variants",
            action="store_true",
            help="compare pooling, PCA size and re-ranking variants on every set and backbone (mAP on the whole "
            "set and on --few-per-class photos per class)",
        )
        parser.add_argument("--few-per-class", type=int, default=4, help="variants mode: photos per class of the small catalog")

    def handle(self, *args: Any, **opts: Any) -> None:
        quiet = opts["no_progress"] or opts["json"]
        bad = [m for m in opts["metrics"] if m not in METRICS] + [m for m in opts["modes"] if m not in ("loo", "split")]
        if bad:
            raise CommandError(f"unknown metric or mode: {', '.join(bad)}")
        try:
            pcas = [0 if p == "none" else int(p) for p in opts["pca"]]
        except ValueError as exc:
            raise CommandError(f"--pca takes sizes or 'none': {exc}") from exc

        directories: list[Path] = opts["directories"]
        if opts["words"]:
            self._words(directories, opts, quiet)
            return
        names = opts["backbones"] or [pipeline.current_backbone().network]
        unknown = [n for n in names if n not in BACKBONES]
        if unknown:
            raise CommandError(f"unknown backbone {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
        if opts["variants"]:
            if opts["few_per_class"] < 2:
                raise CommandError("--few-per-class must be at least 2 (a query needs another photo of its class)")
            self._variants(directories, names, opts, quiet)
            return
        if len(directories) == 1 and len(names) == 1:
            pairs = self._pairs(directories[0], opts["labels"])
            backbone = pipeline.backbone_named(names[0])
            report, rows, default, curves, default_scores, paths, y, images = self._evaluate(pairs, backbone, pcas, opts, quiet)
            if opts["report"]:
                self._write_report(opts["report"], rows, curves, default_scores, paths, y, images)
            if opts["json"]:
                self.stdout.write(json.dumps(report, indent=2, default=float))
                return
            self._print(report, rows, default)
            return
        summary = []
        for name in names:
            backbone = pipeline.backbone_named(name)
            for directory in directories:
                pairs = self._set_pairs(directory, opts, several=len(directories) > 1)
                report = self._evaluate(pairs, backbone, pcas, {**opts, "modes": ["loo"]}, quiet=True)[0]
                summary.append({"backbone": name, "set": directory.name, **report})
        if opts["json"]:
            self.stdout.write(json.dumps(summary, indent=2, default=float))
            return
        self._print_summary(summary, names, [d.name for d in directories])

    def _set_pairs(self, directory: Path, opts: dict[str, Any], *, several: bool) -> list[tuple[Path, str]]:
        """One set's labelled photos: --labels for a lone set, else its own labels.csv if any."""
        labels = None if several else opts["labels"]
        if labels is None and (directory / "labels.csv").is_file():
            labels = directory / "labels.csv"
        return self._pairs(directory, labels)

    def _variants(self, directories: list[Path], names: list[str], opts: dict[str, Any], quiet: bool) -> None:
        """Every standard variant on every set and backbone: one table per backbone."""
        conf = settings.IMAGESEARCH
        default = Variant(
            variants.product_pooling(conf["GEM_P"], conf["CENTRE_REGION"]),
            conf["PCA_DIMS"],
            conf["DBA_K"],
            conf["QE_K"],
            float(conf["QE_ALPHA"]),
        )
        candidates = variants.standard_variants(default)
        report: list[dict[str, Any]] = []
        for name in names:
            backbone = pipeline.backbone_named(name)
            for directory in directories:
                pairs = self._set_pairs(directory, opts, several=len(directories) > 1)
                _, y, _, fmap, embed_ms = self._feature_maps(pairs, backbone, quiet)
                rows = variants.measure(
                    fmap, np.asarray(y), candidates, per_class=opts["few_per_class"], pca_min_images=conf["PCA_MIN_IMAGES"]
                )
                del fmap
                for variant, row in zip(candidates, rows, strict=True):
                    report.append(
                        {
                            "backbone": name,
                            "set": directory.name,
                            "images": len(y),
                            "variant": variant.label,
                            "is_default": variant == default,
                            "embed_ms_per_image_batched": embed_ms,
                            **row,
                        }
                    )
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2, default=float))
            return
        sets = [d.name for d in directories]
        few = opts["few_per_class"]
        for name in names:
            mine = [r for r in report if r["backbone"] == name]
            cost = float(np.mean([r["embed_ms_per_image_batched"] for r in mine if r["is_default"]]))
            self.stdout.write(
                f"\n{name}: leave-one-out mAP on each set, whole (and {few} photos per class); embedding {cost:.1f} ms per photo"
            )
            width = max(12, *(len(s) for s in sets)) + 2
            self.stdout.write(f"{'variant':58s}" + "".join(f"{s:>{width + 8}s}" for s in sets) + f"{'mean':>10s}{'few':>8s}")
            for variant in candidates:
                cells = [next(r for r in mine if r["set"] == s and r["variant"] == variant.label) for s in sets]
                text = "".join(f"{c['map']:>{width}.3f} ({c['map_few']:.3f})" for c in cells)
                mean = float(np.mean([c["map"] for c in cells]))
                mean_few = float(np.mean([c["map_few"] for c in cells]))
                marker = "*" if variant == default else " "
                self.stdout.write(f"{marker}{variant.label:57s}{text}{mean:>10.3f}{mean_few:>8.3f}")
        self.stdout.write("* the product default")

    def _words(self, directories: list[Path], opts: dict[str, Any], quiet: bool) -> None:
        """Words mode over one or more labelled folders pooled into one catalog (a mixed
        catalog makes broader words meaningful)."""
        from benchmarks.words import broader_quality, build_catalog, region_quality, words_quality
        from gallery.vision.lexicon import lexicon

        conf = settings.IMAGESEARCH
        backbone = pipeline.backbone_named(opts["backbones"][0] if opts["backbones"] else pipeline.current_backbone().name)
        if not backbone.labels_available:
            raise CommandError(f"{backbone.name} has no ImageNet classifier here: words search needs labels")
        decoded = []
        for directory in directories:
            labels = opts["labels"] if len(directories) == 1 else None
            if labels is None and (directory / "labels.csv").is_file():
                labels = directory / "labels.csv"
            for path, label in tqdm(self._pairs(directory, labels), desc=f"decode {directory.name}", disable=quiet):
                try:
                    decoded.append((path, pipeline.decode(path.read_bytes()).image, label))
                except ImageDecodeError as exc:
                    self.stderr.write(f"skipping {path}: {exc}")
        options = pipeline.preprocess_options()
        started = time.perf_counter()
        pca = conf["PCA_DIMS"] if len(decoded) >= conf["PCA_MIN_IMAGES"] else 0
        catalog = build_catalog(decoded, backbone, options=options, pca_dims=pca, labels_per_image=conf["LABELS_PER_IMAGE"])
        embed_ms = 1000 * (time.perf_counter() - started) / max(1, len(decoded))
        weight = float(conf["WORDS_LABEL_WEIGHT"])
        truth = self._broader_truth(opts["broader_truth"], set(catalog.labels.tolist()))
        report: dict[str, Any] = {
            "backbone": backbone.name,
            "images": len(decoded),
            "pca": pca or None,
            "embed_and_label_ms_per_image": embed_ms,
            "by_weight": {},
        }
        for w in dict.fromkeys([weight, *(float(x) for x in opts["label_weights"])]):
            report["by_weight"][w] = {
                "words": words_quality(catalog, lexicon(), weight=w),
                "broader": broader_quality(catalog, lexicon(), truth, weight=w) if truth else {},
            }
        if opts["regions"]:
            report["regions"] = region_quality(catalog, backbone, options=options, collages=opts["regions"])
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2, default=float))
            return
        self._print_words(report, weight)

    def _broader_truth(self, path: Path | None, folders: set[str]) -> dict[str, list[str]]:
        default = Path(__file__).resolve().parents[2] / "data" / "caltech101_broader.json"
        chosen = path or default
        if not chosen.is_file():
            return {}
        truth = json.loads(chosen.read_text())["words"]
        if path is None and not all(set(members) <= folders for members in truth.values()):
            return {}  # the default belongs to another set
        return {word: sorted(set(members) & folders) for word, members in truth.items()}

    def _print_words(self, report: dict[str, Any], weight: float) -> None:
        out = self.stdout.write
        out(f"{report['images']} images, backbone {report['backbone']}, PCA-{report['pca'] or 'none'}, label weight {weight}")
        words = report["by_weight"][weight]["words"]
        out(f"{'class':18s} {'words':22s} {'map':>7} {'P@10':>6} {'AP':>6} {'P@10*':>6} {'AP*':>6}  (* = same meaning counts)")
        for name, row in words["classes"].items():
            out(
                f"{name:18s} {', '.join(row['words'])[:22]:22s} {row['mapping']:>7} {row['strict_p@10']:6.3f} "
                f"{row['strict_ap']:6.3f} {row['meaning_p@10']:6.3f} {row['meaning_ap']:6.3f}"
            )
        out(f"not in the lexicon ({len(words['unmapped'])}): {', '.join(words['unmapped']) or 'none'}")
        out(f"partly in the lexicon ({len(words['partial'])}): {', '.join(words['partial']) or 'none'}")
        for w, result in report["by_weight"].items():
            q = result["words"]
            out(
                f"label weight {w}: {len(q['full'])} classes named in the lexicon: precision@10 "
                f"{q['meaning_full_p@10']:.3f} (strict {q['strict_full_p@10']:.3f}), mAP {q['meaning_full_ap']:.3f} "
                f"(strict {q['strict_full_ap']:.3f}); {len(q['partial'])} partly named: precision@10 "
                f"{q['meaning_partial_p@10']:.3f}, mAP {q['meaning_partial_ap']:.3f}"
            )
            for word, row in result["broader"].items():
                if "error" in row:
                    out(f"  broader “{word}”: {row['error']}")
                    continue
                out(f"  broader “{word}”: precision@{row['k']} {row['p@k']:.3f} ({', '.join(row['relevant_classes'])})")
        if "regions" in report:
            r = report["regions"]
            out(
                f"regions ({r['collages']} collages): precision@10 {r['region_p@10']:.3f} by quadrant vs "
                f"{r['photo_p@10']:.3f} by the photo alone (ratio {r['ratio']:.3f})"
            )

    @staticmethod
    def _pairs(directory: Path, labels: Path | None) -> list[tuple[Path, str]]:
        try:
            pairs = read_labels(directory, labels)
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if len({label for _, label in pairs}) < 2:
            raise CommandError(f"{directory}: need at least two labelled classes")
        return pairs

    def _print_summary(self, summary: list[dict[str, Any]], names: list[str], sets: list[str]) -> None:
        """One row per backbone: the product default's leave-one-out mAP on each set, the
        mean over the sets, and the cost (batched embedding, one query end to end)."""
        width = max(len(s) for s in sets) + 2
        self.stdout.write("leave-one-out mAP of the product default (seed pipeline in brackets)")
        self.stdout.write(
            f"{'backbone':20s}"
            + "".join(f"{s:>{width + 9}s}" for s in sets)
            + f"{'mean':>16s}{'ms/image':>10s}{'ms/query':>10s}{'mAP/ms':>9s}"
        )
        for name in names:
            mine = [r for r in summary if r["backbone"] == name]
            cells = "".join(f"{r['default']['map']:>{width}.3f} ({r['seed']['map']:.3f})" for r in mine)
            mean = float(np.mean([r["default"]["map"] for r in mine]))
            seed_mean = float(np.mean([r["seed"]["map"] for r in mine]))
            embed = float(np.mean([r["embed_ms_per_image_batched"] for r in mine]))
            query = float(np.mean([r["query_timing_ms"].get("total_p50", 0.0) for r in mine]))
            per_ms = mean / embed if embed > 0 else 0.0
            self.stdout.write(f"{name:20s}{cells}{mean:>8.3f} ({seed_mean:.3f}){embed:>10.1f}{query:>10.1f}{per_ms:>9.4f}")
        self.stdout.write("mAP/ms: the mean mAP per millisecond of embedding a photo (quality per unit of cost)")

    def _evaluate(
        self, pairs: list[tuple[Path, str]], backbone: Any, pcas: list[int], opts: dict[str, Any], quiet: bool
    ) -> tuple[Any, ...]:
        """Every configuration on one labelled set with one backbone."""
        images, labels, paths, fmap, embed_ms = self._feature_maps(pairs, backbone, quiet)
        y = np.asarray(labels)
        # "gem": the product's pooling, with the configured exponent and centre region
        conf = settings.IMAGESEARCH
        descriptors = {
            "gem": gem_pool(fmap, conf["GEM_P"], conf["CENTRE_REGION"]),
            "avg": l2_normalise(fmap.mean(axis=(1, 2))),
        }
        descriptors["gem"] = l2_normalise(descriptors["gem"])
        del fmap
        return self._configurations(images, y, paths, descriptors, embed_ms, backbone, pcas, opts, quiet)

    def _feature_maps(
        self, pairs: list[tuple[Path, str]], backbone: Any, quiet: bool
    ) -> tuple[list[PILImage.Image], list[str], list[Path], np.ndarray, float]:
        """Decoded photos, their labels and paths, the backbone's feature maps,
        and the batched embedding cost in ms per photo."""
        options = pipeline.preprocess_options()
        images, labels, paths = [], [], []
        for path, label in tqdm(pairs, desc="decode", disable=quiet):
            try:
                images.append(pipeline.decode(path.read_bytes()).image)
            except ImageDecodeError as exc:
                self.stderr.write(f"skipping {path}: {exc}")
                continue
            labels.append(label)
            paths.append(path)
        if not images:
            raise CommandError("no photo of the set could be read")
        started = time.perf_counter()
        maps = []
        for i in tqdm(range(0, len(images), 32), desc="embed", disable=quiet):
            batch = np.stack([backbone.preprocess(im, options) for im in images[i : i + 32]])
            maps.append(backbone.feature_maps(batch))
        fmap = np.concatenate(maps)
        embed_ms = 1000 * (time.perf_counter() - started) / len(images)
        return images, labels, paths, fmap, embed_ms

    def _configurations(
        self,
        images: list[PILImage.Image],
        y: np.ndarray,
        paths: list[Path],
        descriptors: dict[str, np.ndarray],
        embed_ms: float,
        backbone: Any,
        pcas: list[int],
        opts: dict[str, Any],
        quiet: bool,
    ) -> tuple[Any, ...]:
        labels = y.tolist()
        conf = settings.IMAGESEARCH
        pca_default = conf["PCA_DIMS"] if len(images) >= conf["PCA_MIN_IMAGES"] else 0
        default = Config("gem", pca_default, conf["PCA_WHITEN"], conf["DEFAULT_METRIC"], self._default_rerank())
        seed = Config("avg", 100 if len(images) > 100 else 0, False, "cosine", "none")
        configs: list[Config] = []
        whitens = {"no": [False], "yes": [True], "both": [False, True]}[opts["whiten"]]
        for pca in pcas:
            for whiten in whitens if pca else [False]:
                configs += [Config("gem", pca, whiten, m, "none") for m in opts["metrics"]]
        for rerank in ("qe", "dba", "dba+qe"):
            configs.append(Config("gem", pca_default, False, "cosine", rerank))
        configs += [seed, Config("avg", pca_default, False, "cosine", "dba+qe"), default]
        configs = list(dict.fromkeys(configs))

        rows, curves, default_scores = [], {}, None
        for mode in opts["modes"]:
            for config in tqdm(configs, desc=f"evaluate ({mode})", disable=quiet):
                result, matrix = rank(config, descriptors, y, mode)
                row = {
                    "mode": mode,
                    "pooling": config.pooling,
                    "pca": config.pca or None,
                    "whiten": config.whiten,
                    "metric": config.metric,
                    "rerank": config.rerank,
                    "map": result.map,
                    **{f"p@{k}": result.precision_at[k] for k in KS},
                    **{f"r@{k}": result.recall_at[k] for k in KS},
                    **{f"f1@{k}": result.f1_at[k] for k in KS},
                    "is_default": config == default,
                    "is_seed": config == seed,
                }
                rows.append(row)
                if mode == opts["modes"][0] and config in (default, seed, Config("gem", 0, False, "cosine", "none")):
                    curves[("default" if config == default else "seed" if config == seed else "raw")] = result.pr_curve
                if mode == "loo" and config == default:
                    default_scores = matrix

        timing = self._time_queries(descriptors["gem"], default, images, opts["timing_queries"])
        main = next(r for r in rows if r["is_default"])
        seed_row = next(r for r in rows if r["is_seed"] and r["mode"] == main["mode"])
        report = {
            "backbone": backbone.name,
            "images": len(images),
            "classes": len(set(labels)),
            "embed_ms_per_image_batched": embed_ms,
            "query_timing_ms": timing,
            "default": main,
            "seed": seed_row,
            "rows": rows,
        }
        return report, rows, default, curves, default_scores, paths, y, images

    @staticmethod
    def _default_rerank() -> str:
        conf = settings.IMAGESEARCH
        parts = [name for name, on in (("dba", conf["DBA_K"] > 0), ("qe", conf["QE_K"] > 0)) if on]
        return "+".join(parts) or "none"

    def _time_queries(self, x: np.ndarray, default: Config, images: list[PILImage.Image], n: int) -> dict[str, float]:
        """Per-query cost as a user sees it: embed one photo, then search the whole set."""
        if n <= 0:
            return {}
        fitted = fit_pca(x, dims=default.pca) if default.pca else None
        index = VectorIndex(default.pca or x.shape[1], expansion=_expansion(default.rerank))
        index.add(np.arange(len(x)), fitted.transform(x) if fitted else x)
        embed, search = [], []
        for image in images[:n]:
            t0 = time.perf_counter()
            v = pipeline.embed_images([image])[0]
            t1 = time.perf_counter()
            index.search(fitted.transform(v[None])[0] if fitted else v, k=20, metric=default.metric)
            t2 = time.perf_counter()
            embed.append(1000 * (t1 - t0))
            search.append(1000 * (t2 - t1))
        total = np.add(embed, search)
        return {
            "embed_p50": float(np.percentile(embed, 50)),
            "embed_p95": float(np.percentile(embed, 95)),
            "search_p50": float(np.percentile(search, 50)),
            "search_p95": float(np.percentile(search, 95)),
            "total_p50": float(np.percentile(total, 50)),
            "total_p95": float(np.percentile(total, 95)),
        }

    def _print(self, report: dict[str, Any], rows: list[dict[str, Any]], default: Config) -> None:
        out = self.stdout.write
        out(
            f"{report['images']} images, {report['classes']} classes, backbone {report['backbone']}, "
            f"{report['embed_ms_per_image_batched']:.1f} ms/image to embed in batches"
        )
        header = f"{'mode':>5} {'pool':>4} {'PCA':>5} {'white':>5} {'metric':>13} {'rerank':>7} {'mAP':>6}"
        header += "".join(f" {'P@' + str(k):>6}" for k in KS) + "".join(f" {'R@' + str(k):>6}" for k in KS)
        header += "".join(f" {'F1@' + str(k):>6}" for k in KS)
        out(header)
        for r in rows:
            line = f"{r['mode']:>5} {r['pooling']:>4} {(r['pca'] or 'none')!s:>5} {('yes' if r['whiten'] else 'no'):>5} "
            line += f"{r['metric']:>13} {r['rerank']:>7} {r['map']:6.3f}"
            line += "".join(f" {r[f'p@{k}']:6.3f}" for k in KS) + "".join(f" {r[f'r@{k}']:6.3f}" for k in KS)
            line += "".join(f" {r[f'f1@{k}']:6.3f}" for k in KS)
            out(line + ("  ← default" if r["is_default"] else "  ← seed" if r["is_seed"] else ""))
        t = report["query_timing_ms"]
        if t:
            out(
                f"per query: embed p50 {t['embed_p50']:.1f} ms / p95 {t['embed_p95']:.1f} ms, "
                f"search p50 {t['search_p50']:.2f} ms / p95 {t['search_p95']:.2f} ms, "
                f"total p50 {t['total_p50']:.1f} ms / p95 {t['total_p95']:.1f} ms"
            )
        seed = report["seed"]
        out(f"seed pipeline ({seed['mode']}: avg pooling, PCA-{seed['pca'] or 'none'}, cosine): mAP {seed['map']:.3f}")
        d = report["default"]
        out(f"mAP {d['map']:.3f}, precision@10 {d['p@10']:.3f} (product default, {d['mode']}: {default.label})")

    def _write_report(
        self,
        folder: Path,
        rows: list[dict[str, Any]],
        curves: dict[str, np.ndarray],
        scores: np.ndarray | None,
        paths: list[Path],
        labels: np.ndarray,
        images: list[PILImage.Image],
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        names = {"default": "product default", "seed": "seed (avg, PCA-100)", "raw": "GeM, raw"}
        for key, curve in curves.items():
            ax.plot(RECALL_LEVELS, curve, marker="o", markersize=3, label=names.get(key, key))
        ax.set_xlabel("recall")
        ax.set_ylabel("interpolated precision")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("Precision-recall, every image a query")
        fig.tight_layout()
        fig.savefig(folder / "precision_recall.png")
        plt.close(fig)
        if scores is not None:
            self._contact_sheet(folder / "contact_sheet.png", scores, labels, images)
        self.stderr.write(f"report written to {folder}")

    @staticmethod
    def _contact_sheet(
        path: Path, scores: np.ndarray, labels: np.ndarray, images: list[PILImage.Image], queries: int = 6, top: int = 8
    ) -> None:
        """Rows of query + top results; green border = same class, red = not."""
        cell, pad = 128, 6
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(images), size=min(queries, len(images)), replace=False)
        sheet = PILImage.new("RGB", ((top + 1) * (cell + pad) + pad, len(chosen) * (cell + pad) + pad), "white")
        for row, qi in enumerate(chosen):
            s = scores[qi].copy()
            s[qi] = -np.inf
            order = np.argsort(-s)[:top]
            tiles = [(qi, (60, 60, 60))] + [(int(j), (30, 160, 60) if labels[j] == labels[qi] else (200, 40, 40)) for j in order]
            for col, (j, colour) in enumerate(tiles):
                thumb = images[j].copy()
                thumb.thumbnail((cell - 8, cell - 8))
                tile = PILImage.new("RGB", (cell, cell), colour)
                tile.paste(thumb, ((cell - thumb.width) // 2, (cell - thumb.height) // 2))
                sheet.paste(tile, (pad + col * (cell + pad), pad + row * (cell + pad)))
        sheet.save(path)
