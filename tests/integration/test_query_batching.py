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


def test_query_photos_run_on_onnx_runtime_matching_tensorflow(butterflies, settings, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """By default the query path runs on ONNX Runtime, within 1e-4 of TensorFlow's vectors
    for real photos; set to tensorflow, or when a conversion does not match, TensorFlow."""
    from gallery.vision import onnx_query

    backbone = pipeline.current_backbone()
    photos = [pipeline.decode(p.read_bytes()).image for p in butterflies["002"][:4]]
    expected = pipeline.embed_images(photos, backbone=backbone)
    pipeline._query_paths.clear()
    try:
        assert pipeline.query_runtime(backbone) == "onnx"
        for photo, vector in zip(photos, expected, strict=True):
            assert np.abs(pipeline.embed_query(photo, backbone=backbone) - vector).max() <= 1e-4

        pipeline._query_paths.clear()
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "QUERY_RUNTIME": "tensorflow"}
        assert pipeline.query_runtime(backbone) == "tensorflow"
        assert np.abs(pipeline.embed_query(photos[0], backbone=backbone) - expected[0]).max() <= 1e-5

        pipeline._query_paths.clear()
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "QUERY_RUNTIME": "onnx"}
        monkeypatch.setattr(onnx_query, "TOLERANCE", -1.0)  # no conversion can match: TensorFlow stays
        with caplog.at_level("WARNING"):
            assert pipeline.query_runtime(backbone) == "tensorflow"
        assert "TensorFlow embeds queries" in caplog.text
    finally:
        pipeline._query_paths.clear()
