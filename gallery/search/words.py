"""Search by words: the ImageNet labels the worker stored with each image, the words the
shipped lexicon knows for them, and the visual neighbourhood of the best label hits.

A query's score for an image blends how confident its labels are in the classes the words
mean (summed over those classes, so "dog" counts every breed) with its visual similarity
to the best label hits, so a relevant photo the classifier labelled differently still
appears; IMAGESEARCH_WORDS_LABEL_WEIGHT sets the blend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db.models import Sum

from gallery.catalog import pipeline
from gallery.catalog.models import Image, ImageLabel
from gallery.errors import SearchRejected
from gallery.search.index import space_index
from gallery.search.selectors import (
    NO_FILTERS,
    SearchFilters,
    SearchHit,
    Space,
    _hydrate,
    _search_within,
    active_space,
    one_per_group,
    space_vectors,
)
from gallery.vision.index import Hit
from gallery.vision.lexicon import PROTOTYPE_HITS, WordsQuery, blend, lexicon, prototype

MAX_QUERY_CHARS = 200
# Label candidates read per query: enough for the page and for the blend.
LABEL_CANDIDATES = 500


@dataclass(frozen=True)
class WordsResult:
    query: WordsQuery
    hits: list[SearchHit]

    @property
    def understood(self) -> list[str]:
        return [t.word for t in self.query.terms]


def words_parse(*, text: str) -> WordsQuery:
    """The words of a query the lexicon knows; refuses an empty, overlong or wholly
    unknown query with a message (and suggestions for what was typed)."""
    text = (text or "").strip()
    if not text:
        raise SearchRejected("Type a word to search for, such as “bird”, “espresso” or “airliner”.", code="empty_query")
    if len(text) > MAX_QUERY_CHARS:
        raise SearchRejected(f"The words are longer than {MAX_QUERY_CHARS} characters.", code="query_too_long")
    query = lexicon().parse(text)
    if not query.terms:
        suggestions = [s for word in query.unknown[:3] for s in words_suggest(prefix=word[:4], limit=3)]
        hint = f" Did you mean {', '.join(f'“{s}”' for s in suggestions[:5])}?" if suggestions else ""
        raise SearchRejected(
            f"No photo is labelled with “{text[:60]}”: the search knows the names of 1,000 everyday things and "
            f"broader words for them (bird, dog, fruit, vehicle).{hint}",
            code="unknown_words",
            suggestions=list(dict.fromkeys(suggestions))[:5],
        )
    return query


def words_suggest(*, prefix: str, limit: int = 8) -> list[str]:
    """Words the search knows that start like `prefix`, for suggestions as one types."""
    return lexicon().suggest(prefix[:MAX_QUERY_CHARS], limit=max(1, min(limit, 20)))


def _label_scores(*, backbone: str, classes: frozenset[int], allowed: set[int] | None) -> dict[int, float]:
    """Each searchable image's summed label confidence over `classes`, best first."""
    rows = ImageLabel.objects.filter(
        backbone=backbone,
        class_index__in=sorted(classes),
        image__status=Image.Status.READY,
        image__visibility=Image.Visibility.PUBLISHED,
    )
    if allowed is not None:
        rows = rows.filter(image_id__in=allowed)
    best = rows.values("image_id").annotate(score=Sum("confidence")).order_by("-score", "image_id")[:LABEL_CANDIDATES]
    return {int(r["image_id"]): min(1.0, float(r["score"])) for r in best}


def _prototype(space: Space, labelled: dict[int, float]) -> np.ndarray | None:
    """The mean vector of the best label hits: what the words look like in this catalog."""
    best = list(labelled)[:PROTOTYPE_HITS]
    vectors = space_vectors(space, best)
    ids = [i for i in best if i in vectors]
    if not ids:
        return None
    return prototype(np.stack([vectors[i] for i in ids]), np.array([labelled[i] for i in ids], dtype=np.float32))


def search_by_words(*, text: str, limit: int = 20, filters: SearchFilters = NO_FILTERS) -> WordsResult:
    """Catalog images for a query in words, best first, narrowed by `filters`."""
    query = words_parse(text=text)
    space = active_space()
    if not pipeline.backbone_named(space.backbone).labels_available:
        raise SearchRejected(
            f"Search by words needs labels, which {space.backbone} cannot give (it was loaded without its classifier).",
            code="labels_unavailable",
        )
    allowed = filters.allowed_ids()
    labelled = _label_scores(backbone=space.backbone, classes=query.classes, allowed=allowed)
    weight = float(settings.IMAGESEARCH["WORDS_LABEL_WEIGHT"])
    visual: dict[int, float] = {}
    centre = _prototype(space, labelled)
    index = space_index(backbone=space.backbone, reduction=space.reduction)
    if centre is not None and index is not None and weight < 1:
        k = max(3 * limit, 50)
        for hit in _search_within(index, centre, allowed=allowed, limit=k, metric="cosine", exclude=None):
            visual[hit.id] = max(0.0, float(hit.score))
        # The label hits' own similarity, for those beyond the visual top-k.
        missing = [i for i in labelled if i not in visual]
        for image_id, v in space_vectors(space, missing).items():
            visual[image_id] = max(0.0, float(v @ centre / max(float(np.linalg.norm(v)), 1e-12)))
    ids = sorted(set(labelled) | set(visual))
    blended = blend(
        np.array([labelled.get(i, 0.0) for i in ids], dtype=np.float32),
        np.array([visual.get(i, 0.0) for i in ids], dtype=np.float32),
        weight=weight,
    )
    ranked = [Hit(i, float(s)) for i, s in zip(ids, blended, strict=True) if np.isfinite(s)]
    ranked.sort(key=lambda h: (-h.score, h.id))
    if filters.one_per_group:
        ranked = one_per_group(ranked[: 3 * limit], space=space)
    return WordsResult(query=query, hits=_hydrate(ranked[:limit]))


def image_labels(*, image: Image, min_confidence: float = 0.05, limit: int = 5) -> list[tuple[str, float]]:
    """An image's labels for the catalog's backbone, readable, most confident first."""
    names = lexicon().classes
    rows = ImageLabel.objects.filter(
        image=image, backbone=pipeline.catalog_state().backbone, confidence__gte=min_confidence
    ).order_by("rank")[:limit]
    return [(names[r.class_index].name, float(r.confidence)) for r in rows]
