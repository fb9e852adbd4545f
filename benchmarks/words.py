"""Words and region search quality on a labelled folder (evaluate --words).

Words: every image is embedded and labelled in one forward pass, as the worker does; each
class whose name the lexicon knows ("Leopards" → leopard, "car_side" → car) is a query,
ranked with the same maths as the product's words search (label confidence blended with
likeness to the best label hits, in the product's PCA space) and scored by precision@10
and average precision. Broader words ("bird", "dog") count an image relevant when its
class name means one of the word's classes. Regions: 2x2 collages of photos from the
set; each quadrant's box is searched against the rest of the set and compared with
searching the photo alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from benchmarks.metrics import evaluate_ranked
from gallery.vision.backbones import Backbone
from gallery.vision.lexicon import Lexicon, blend, prototype
from gallery.vision.preprocess import PreprocessOptions
from gallery.vision.reduction import fit_pca


@dataclass
class Catalog:
    """A labelled set as the product would hold it: vectors in the search space and the
    top labels of each image."""

    paths: list[Path]
    labels: np.ndarray
    vectors: np.ndarray  # (n, d) L2-normalised, in the search space
    raw: np.ndarray  # (n, dim) backbone embeddings
    probs: np.ndarray  # (n, 1000): the top `labels_per_image` kept, the rest 0
    pca: Any = None
    images: list[PILImage.Image] = field(default_factory=list)

    def project(self, raw: np.ndarray) -> np.ndarray:
        x = self.pca.transform(raw) if self.pca is not None else raw
        return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12), dtype=np.float32)


def build_catalog(
    pairs: list[tuple[Path, PILImage.Image, str]],
    backbone: Backbone,
    *,
    options: PreprocessOptions,
    pca_dims: int,
    labels_per_image: int,
    batch_size: int = 32,
) -> Catalog:
    images = [im for _, im, _ in pairs]
    raw, probs = backbone.embed_and_label(images, batch_size=batch_size, options=options)
    if probs is None:
        raise ValueError(f"{backbone.name} has no classifier: words search needs labels")
    kept = np.zeros_like(probs)
    top = np.argsort(-probs, axis=1)[:, :labels_per_image]
    rows = np.arange(len(probs))[:, None]
    kept[rows, top] = probs[rows, top]
    pca = fit_pca(raw, dims=pca_dims) if pca_dims else None
    catalog = Catalog([p for p, _, _ in pairs], np.array([lab for _, _, lab in pairs]), raw, raw, kept, pca, images)
    catalog.vectors = catalog.project(raw)
    return catalog


def class_words(name: str) -> str:
    """A folder's class name as a person would type it ("car_side" → "car side")."""
    return name.replace("_", " ").strip()


def rank_words(catalog: Catalog, classes: frozenset[int], *, weight: float) -> np.ndarray:
    """Image indices ranked for a query meaning `classes`; images below the floor are left out."""
    label_scores = catalog.probs[:, sorted(classes)].sum(axis=1)
    centre = prototype(catalog.vectors, label_scores)
    visual = catalog.vectors @ centre if centre is not None else np.zeros(len(label_scores), np.float32)
    scores = blend(label_scores, visual, weight=weight)
    order = np.argsort(-scores, kind="stable")
    return order[np.isfinite(scores[order])]


def class_meaning(lexicon: Lexicon, name: str) -> tuple[frozenset[int], str]:
    """What a class name means to the lexicon (its first known phrase) and how well it
    maps: "full" (every word known), "partial" ("car_side": car) or "none"."""
    query = lexicon.parse(class_words(name))
    if not query.terms:
        return frozenset(), "none"
    return query.terms[0].classes, "partial" if query.unknown or len(query.terms) > 1 else "full"


def words_quality(catalog: Catalog, lexicon: Lexicon, *, weight: float) -> dict[str, Any]:
    """Per class whose name the lexicon knows: precision@10 and AP of searching by that
    name. Two judgements: `strict` counts only photos of that folder; `meaning` also counts
    photos of folders whose name means the same thing (a "flamingo_head" photo for
    "flamingo", a "windsor_chair" for "chair"). Headline figures are over the classes whose
    every word is known; partly known names ("sea_horse" → horse) are listed apart."""
    names = sorted(set(catalog.labels.tolist()))
    meanings = {name: class_meaning(lexicon, name) for name in names}
    per_class: dict[str, dict[str, Any]] = {}
    for name in names:
        classes, mapping = meanings[name]
        if mapping == "none":
            continue
        order = rank_words(catalog, classes, weight=weight)
        same = {other for other in names if other == name or (meanings[other][0] & classes and meanings[other][1] != "none")}
        row: dict[str, Any] = {"words": [t.word for t in lexicon.parse(class_words(name)).terms], "mapping": mapping}
        for judge, members in (("strict", {name}), ("meaning", same)):
            relevant = np.isin(catalog.labels[order], sorted(members))
            scores = evaluate_ranked([relevant], [int(np.isin(catalog.labels, sorted(members)).sum())], ks=(10,))
            row[f"{judge}_p@10"], row[f"{judge}_ap"] = scores.precision_at[10], scores.map
        row["same_meaning"] = sorted(same - {name})
        per_class[name] = row

    def mean(key: str, mapping: str) -> float:
        values = [r[key] for r in per_class.values() if r["mapping"] == mapping]
        return float(np.mean(values)) if values else 0.0

    return {
        "classes": per_class,
        "full": [n for n, r in per_class.items() if r["mapping"] == "full"],
        "partial": [n for n, r in per_class.items() if r["mapping"] == "partial"],
        "unmapped": [n for n in names if meanings[n][1] == "none"],
        **{
            f"{judge}_{m}_{what}": mean(f"{judge}_{what}", m)
            for judge in ("strict", "meaning")
            for m in ("full", "partial")
            for what in ("p@10", "ap")
        },
    }


def broader_quality(
    catalog: Catalog, lexicon: Lexicon, truth: dict[str, list[str]], *, weight: float, k: int = 20
) -> dict[str, Any]:
    """precision@k of broader words; `truth` names, for each word, the folders a person
    judged to belong to it (emu, ibis and pigeon are birds though ImageNet has no such class)."""
    out: dict[str, dict[str, Any]] = {}
    for word, members in truth.items():
        query = lexicon.parse(word)
        if not query.terms:
            out[word] = {"error": "unknown word"}
            continue
        order = rank_words(catalog, query.classes, weight=weight)[:k]
        relevant = np.isin(catalog.labels[order], members)
        out[word] = {"p@k": float(relevant.sum() / k), "k": k, "relevant_classes": members, "returned": len(order)}
    return out


def region_quality(
    catalog: Catalog,
    backbone: Backbone,
    *,
    options: PreprocessOptions,
    collages: int,
    side: int = 320,
    seed: int = 0,
    k: int = 10,
) -> dict[str, Any]:
    """precision@k of searching a quadrant of a 2x2 collage vs searching its photo alone;
    the four photos of a collage are left out of the catalog searched."""
    rng = np.random.default_rng(seed)
    boxes = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0)]
    region_p: list[float] = []
    alone_p: list[float] = []
    for _ in range(collages):
        chosen = rng.choice(len(catalog.paths), size=4, replace=False)
        canvas = PILImage.new("RGB", (2 * side, 2 * side), "white")
        for q, i in enumerate(chosen):
            canvas.paste(catalog.images[i].resize((side, side)), ((q % 2) * side, (q // 2) * side))
        crops = [
            canvas.crop((round(b[0] * 2 * side), round(b[1] * 2 * side), round(b[2] * 2 * side), round(b[3] * 2 * side)))
            for b in boxes
        ]
        regions = catalog.project(backbone.embed(crops, options=options))
        alone = catalog.vectors[chosen]
        mask = np.ones(len(catalog.paths), dtype=bool)
        mask[chosen] = False
        candidates = np.flatnonzero(mask)
        for q, i in enumerate(chosen):
            for query, into in ((regions[q], region_p), (alone[q], alone_p)):
                sims = catalog.vectors[candidates] @ query
                top = candidates[np.argsort(-sims, kind="stable")[:k]]
                into.append(float(np.mean(catalog.labels[top] == catalog.labels[i])))
    region, photo = float(np.mean(region_p)), float(np.mean(alone_p))
    return {"collages": collages, "region_p@10": region, "photo_p@10": photo, "ratio": region / photo if photo else 0.0}
