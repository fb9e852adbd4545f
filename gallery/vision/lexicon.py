"""The words of the 1,000 ImageNet classes: which classes a typed word means, and
suggestions as one types.

The data file (data/imagenet_classes.json) is generated once from WordNet by
scripts/imagenet_words.py and shipped with the code; nothing is looked up at run time.
A word means the classes it names and every class under its most common broader sense:
"espresso" one class, "bird" the 59 bird classes, "dog" the 118 dog breeds.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.json"
CLASS_COUNT = 1000
# The longest phrase in the vocabulary has 7 words; a query is matched phrase by phrase.
_MAX_PHRASE_WORDS = 8


@dataclass(frozen=True)
class ClassInfo:
    index: int
    wnid: str
    name: str
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class Term:
    """One phrase of a query that the vocabulary knows, with the classes it means."""

    word: str
    classes: frozenset[int]


@dataclass(frozen=True)
class WordsQuery:
    """A parsed query: the known phrases (in order) and the words nobody labels photos with."""

    text: str
    terms: tuple[Term, ...] = ()
    unknown: tuple[str, ...] = field(default=())

    @property
    def classes(self) -> frozenset[int]:
        found: set[int] = set()
        for term in self.terms:
            found |= term.classes
        return frozenset(found)


def normalise(text: str) -> str:
    """Lowercase words separated by single spaces ("Monarch_Butterflies!" → "monarch butterflies")."""
    text = text.lower().replace("_", " ")
    return " ".join(re.findall(r"[\w'][\w'.-]*", text)).strip(" .-")


def _singulars(word: str) -> list[str]:
    """The word, what it might be the plural of, and its plural, for the last word of a phrase."""
    out = [word]
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith(("ches", "shes", "sses", "xes", "oes")):
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        out.append(word[:-1])
    if not word.endswith("s"):  # things named in the plural: "binocular" → "binoculars"
        out.append(word + "s")
    return out


class Lexicon:
    """The vocabulary and class names, loaded once per process."""

    def __init__(self, data: dict[str, object]):
        raw_classes = data["classes"]
        assert isinstance(raw_classes, list) and len(raw_classes) == CLASS_COUNT
        self.classes = tuple(
            ClassInfo(i, str(c["wnid"]), str(c["name"]), tuple(c["synonyms"])) for i, c in enumerate(raw_classes)
        )
        raw_words = data["words"]
        assert isinstance(raw_words, dict)
        self.words: dict[str, frozenset[int]] = {str(w): frozenset(int(i) for i in ids) for w, ids in raw_words.items()}
        self._sorted = sorted(self.words)

    @classmethod
    def from_file(cls, path: Path = DATA_FILE) -> Lexicon:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def lookup(self, phrase: str) -> tuple[str, frozenset[int]] | None:
        """The vocabulary word a phrase is (its plural accepted) and the classes it means."""
        phrase = normalise(phrase)
        if not phrase:
            return None
        head, _, last = phrase.rpartition(" ")
        for candidate in _singulars(last):
            word = f"{head} {candidate}" if head else candidate
            for variant in (word, word.replace("-", " ")):
                if variant in self.words:
                    return variant, self.words[variant]
        return None

    def parse(self, text: str) -> WordsQuery:
        """Split a query into the longest phrases the vocabulary knows, left to right
        ("red fox terrier on grass" → "red fox", "terrier", unknown "on", "grass")."""
        tokens = normalise(text).split()
        terms: list[Term] = []
        unknown: list[str] = []
        i = 0
        while i < len(tokens):
            for j in range(min(len(tokens), i + _MAX_PHRASE_WORDS), i, -1):
                found = self.lookup(" ".join(tokens[i:j]))
                if found is not None:
                    terms.append(Term(found[0], found[1]))
                    i = j
                    break
            else:
                unknown.append(tokens[i])
                i += 1
        return WordsQuery(text=text, terms=tuple(dict.fromkeys(terms)), unknown=tuple(dict.fromkeys(unknown)))

    @cached_property
    def _by_word_start(self) -> list[tuple[str, str]]:
        """(a word inside a phrase, the phrase) for every phrase of several words, sorted."""
        pairs = []
        for phrase in self._sorted:
            for piece in phrase.split(" ")[1:]:
                pairs.append((piece, phrase))
        return sorted(pairs)

    def suggest(self, prefix: str, *, limit: int = 8) -> list[str]:
        """Vocabulary words starting with `prefix`, then phrases with a word starting with
        it; shorter and broader words first."""
        prefix = normalise(prefix)
        if not prefix:
            return []
        found: list[str] = []
        start = bisect.bisect_left(self._sorted, prefix)
        for word in self._sorted[start:]:
            if not word.startswith(prefix):
                break
            found.append(word)
        inner: list[str] = []
        pairs = self._by_word_start
        start = bisect.bisect_left(pairs, (prefix, ""))
        for piece, phrase in pairs[start:]:
            if not piece.startswith(prefix):
                break
            inner.append(phrase)
        ranked = sorted(dict.fromkeys(found), key=lambda w: (-min(len(self.words[w]), 50), len(w), w))
        rest = sorted(set(inner) - set(found), key=lambda w: (-min(len(self.words[w]), 50), len(w), w))
        return (ranked + rest)[:limit]

    def names(self, classes: frozenset[int] | set[int] | list[int]) -> list[str]:
        return [self.classes[i].name for i in sorted(classes)]


_lexicon: Lexicon | None = None
_lock = threading.Lock()


def lexicon() -> Lexicon:
    """The shipped lexicon, read once per process."""
    global _lexicon
    with _lock:
        if _lexicon is None:
            _lexicon = Lexicon.from_file()
        return _lexicon


# ---- ranking by words: the maths search and the evaluation share

# How many of the best label hits make the visual prototype, and the least label
# confidence one must have to count among them.
PROTOTYPE_HITS = 8
PROTOTYPE_MIN_CONFIDENCE = 0.2
# A result must score at least this share of the best one: a photo that merely looks a
# little like the words' photos, with no label for them, is not a result.
MIN_RELATIVE_SCORE = 0.5


def prototype(vectors: np.ndarray, label_scores: np.ndarray) -> np.ndarray | None:
    """The mean direction of the best label hits (rows of `vectors`, scored by their
    labels): what the words look like in this catalog; None when nothing is labelled so."""
    order = np.argsort(-label_scores, kind="stable")
    best = [i for i in order[:PROTOTYPE_HITS] if label_scores[i] >= PROTOTYPE_MIN_CONFIDENCE]
    if not best:
        return None
    x = np.asarray(vectors[best], dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = x.mean(axis=0)
    return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), dtype=np.float32)


def blend(label_scores: np.ndarray, visual: np.ndarray, *, weight: float) -> np.ndarray:
    """Each image's words score: `weight` of its label confidence (capped at 1) and the
    rest its (non-negative) similarity to the prototype; below the floor → -inf (not a result)."""
    scores = weight * np.minimum(label_scores, 1.0) + (1 - weight) * np.maximum(visual, 0.0)
    if scores.size and scores.max() > 0:
        scores = np.where(scores >= MIN_RELATIVE_SCORE * scores.max(), scores, -np.inf)
    return scores
