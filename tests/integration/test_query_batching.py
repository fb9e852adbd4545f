"""Search photos embedded together give the vectors they get alone."""

from __future__ import annotations

import threading

import numpy as np

from gallery.catalog import pipeline


def test_concurrent_query_photos_get_the_vectors_of_the_catalog_pipeline(butterflies) -> None:  # type: ignore[no-untyped-def]
    photos = [pipeline.decode(p.read_bytes()).image for s in ("001", "003", "006", "009") for p in butterflies[s][:3]]
    backbone = pipeline.current_backbone()
    expected = pipeline.embed_images(photos, backbone=backbone)
    assert np.allclose(pipeline.embed_query(photos[0], backbone=backbone), expected[0], atol=1e-5)

    batcher = pipeline._query_batcher(backbone)
    passes_before, photos_before = batcher.passes, batcher.photos
    got: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(photos))

    def search(i: int) -> None:
        barrier.wait()
        got[i] = pipeline.embed_query(photos[i], backbone=backbone)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(got) == list(range(len(photos)))
    for i, vector in got.items():
        assert np.allclose(vector, expected[i], atol=1e-4), i
        # each photo's own vector: nearest to its catalog twin among all twelve
        assert int(np.argmax(expected @ vector)) == i
    assert batcher.photos - photos_before == len(photos)
    assert batcher.passes - passes_before < len(photos)
