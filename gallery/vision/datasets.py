"""Labelled photo folders: class per sub-folder, or a CSV of filename,label."""

from __future__ import annotations

import csv
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def find_images(root: Path) -> list[Path]:
    """Every image file under root, recursively, in a stable order."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_labels(root: Path, labels_csv: Path | None = None) -> list[tuple[Path, str]]:
    """(path, label) pairs. A CSV's first column names the file (relative to root or to the
    CSV's folder); the label is the column called label/class/class_id, else the second."""
    root = Path(root)
    if labels_csv is None:
        return [(p, p.parent.name) for p in find_images(root) if p.parent != root]
    labels_csv = Path(labels_csv)
    with open(labels_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{labels_csv} is empty")
    header = [h.strip().lower() for h in rows[0]]
    label_col = next((header.index(c) for c in ("label", "class", "class_id", "category") if c in header), None)
    has_header = label_col is not None or header[0] in ("filename", "file", "path", "image")
    if label_col is None:
        label_col = 1
    pairs = []
    for row in rows[1 if has_header else 0 :]:
        if len(row) <= label_col or not row[0].strip():
            continue
        name = row[0].strip()
        for base in (root, labels_csv.parent, root / "images"):
            candidate = base / name
            if candidate.is_file():
                pairs.append((candidate, row[label_col].strip()))
                break
        else:
            raise FileNotFoundError(f"{name} (listed in {labels_csv}) was not found under {root}")
    return pairs
