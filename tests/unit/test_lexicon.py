"""The shipped words of the ImageNet classes: what a typed word means, and suggestions."""

from __future__ import annotations

import numpy as np

from gallery.vision.lexicon import CLASS_COUNT, blend, lexicon, prototype


def _names(word: str) -> list[str]:
    found = lexicon().lookup(word)
    assert found is not None, word
    return lexicon().names(found[1])


def test_every_class_has_a_wordnet_id_a_readable_name_and_its_synonyms() -> None:
    classes = lexicon().classes
    assert len(classes) == CLASS_COUNT
    assert [c.wnid for c in classes] == sorted(c.wnid for c in classes)  # the classifier's order
    assert classes[0].wnid == "n01440764" and classes[0].name == "tench"
    assert "monarch butterfly" in [c.name for c in classes]
    espresso = next(c for c in classes if c.name == "espresso")
    assert "espresso" in espresso.synonyms


def test_broader_words_mean_every_narrower_class() -> None:
    assert len(_names("bird")) == 59
    dogs = _names("dog")
    assert len(dogs) == 118 and "Dalmatian" in dogs and "Chihuahua" in dogs
    assert "strawberry" in _names("fruit") and "Granny Smith apple" in _names("fruit")
    vehicles = _names("vehicle")
    assert {"airliner", "ambulance", "schooner", "moped"} <= set(vehicles)
    cats = _names("cat")
    assert "Persian cat" in cats and "lion" not in cats  # lions are big cats, not cats


def test_a_word_that_names_two_things_means_both() -> None:
    assert set(_names("crane")) == {"crane bird", "construction crane"}


def test_plurals_underscores_and_case_are_understood() -> None:
    assert _names("Monarch_Butterflies") == ["monarch butterfly"]
    assert _names("strawberries") == ["strawberry"]
    assert _names("binocular") == ["binoculars"]


def test_a_query_is_split_into_known_phrases_and_unknown_words() -> None:
    query = lexicon().parse("a red fox and a Golden Retriever on grass")
    assert [t.word for t in query.terms] == ["red fox", "golden retriever"]
    assert set(query.unknown) == {"a", "and", "on", "grass"}
    assert lexicon().parse("qwxz").terms == ()
    assert lexicon().parse("").terms == ()


def test_suggestions_start_like_what_was_typed_broader_words_first() -> None:
    assert lexicon().suggest("butter")[0] == "butterfly"
    assert "monarch butterfly" in lexicon().suggest("butter")
    assert lexicon().suggest("fru")[0] == "fruit"
    assert lexicon().suggest("monarch")[0].startswith("monarch")
    assert lexicon().suggest("zzzq") == []
    assert lexicon().suggest("   ") == []
    assert len(lexicon().suggest("s", limit=5)) == 5


def test_the_blend_keeps_strong_label_hits_and_drops_weak_lookalikes() -> None:
    labels = np.array([0.9, 0.0, 0.6, 0.0], dtype=np.float32)
    visual = np.array([0.8, 0.9, 0.7, 0.1], dtype=np.float32)
    scores = blend(labels, visual, weight=0.5)
    assert np.argmax(scores) == 0
    assert np.isfinite(scores[1])  # no label, but it looks like the label hits: still a result
    assert scores[3] == -np.inf  # neither labelled nor alike: not a result


def test_the_prototype_is_the_direction_of_the_confident_label_hits() -> None:
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    centre = prototype(vectors, np.array([0.9, 0.5, 0.05], dtype=np.float32))
    assert centre is not None and centre[0] > 0.99
    assert prototype(vectors, np.array([0.1, 0.1, 0.0], dtype=np.float32)) is None
