"""Search photos embedded together give the vectors they get alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

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


# GeM-3 of the whole map (catalogs embedded before) and the product's default pooling.
POOLINGS = [pytest.param(3.0, False, id="gem3"), pytest.param(2.0, True, id="gem2-centre")]


@pytest.mark.parametrize(("gem_p", "centre"), POOLINGS)
def test_query_photos_run_on_onnx_runtime_matching_tensorflow(butterflies, settings, monkeypatch, caplog, gem_p, centre) -> None:  # type: ignore[no-untyped-def]
    """By default the query path runs on ONNX Runtime, within 1e-4 of TensorFlow's vectors
    for real photos; set to tensorflow, or when a conversion does not match, TensorFlow."""
    from gallery.vision import onnx_query

    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GEM_P": gem_p, "CENTRE_REGION": centre}
    backbone = pipeline.current_backbone()
    assert backbone.centre == centre
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


def test_copy_checks_run_their_forward_passes_on_onnx_runtime_with_the_same_scores(
    butterflies, settings, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    """Copy checks compute feature maps on ONNX Runtime by default: maps of any shape within
    1e-4 of TensorFlow's, and an edited copy scores against its work as it does with
    TensorFlow; set to tensorflow, or when a conversion does not match, TensorFlow."""
    from gallery.vision import copydetect, onnx_query

    backbone = pipeline.current_backbone()
    work = pipeline.decode(butterflies["004"][0].read_bytes()).image.convert("RGB")
    width, height = work.size
    copy = work.crop((width // 8, height // 10, width - width // 6, height)).rotate(4, expand=True)
    other = pipeline.decode(butterflies["008"][1].read_bytes()).image

    def scores() -> list[float]:
        index = copydetect.CopyIndex()
        index.add(1, copydetect.describe_work(backbone, work))
        return [next(c for c in index.match(index.describe(backbone, im)) if c.work_id == 1).score for im in (copy, other)]

    pipeline._runtimes.clear()
    try:
        backbone.use_maps_runtime(None)
        on_tensorflow = scores()
        assert pipeline.copy_check_backbone() is backbone
        assert backbone.maps_runtime == "onnx"
        for size in ((320, 240), (197, 320)):
            photo = np.asarray(work.resize(size), dtype=np.uint8)[None]
            reference = backbone.tensorflow_maps(photo)
            got = backbone.feature_maps(photo)
            assert got.shape == reference.shape
            assert np.abs(got - reference).max() <= 1e-4 * max(1.0, float(np.abs(reference).max()))
        on_onnx = scores()
        assert np.allclose(on_onnx, on_tensorflow, atol=1e-3)
        assert on_onnx[0] >= settings.COPYRIGHT["THRESHOLD"] > on_onnx[1]

        pipeline._runtimes.clear()
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "QUERY_RUNTIME": "tensorflow"}
        assert pipeline.copy_check_backbone().maps_runtime == "tensorflow"

        pipeline._runtimes.clear()
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "QUERY_RUNTIME": "onnx"}
        monkeypatch.setattr(onnx_query, "TOLERANCE", -1.0)  # no conversion can match: TensorFlow stays
        with caplog.at_level("WARNING"):
            assert pipeline.copy_check_backbone().maps_runtime == "tensorflow"
        assert "TensorFlow computes them" in caplog.text
    finally:
        backbone.use_maps_runtime(None)
        pipeline._runtimes.clear()


@pytest.mark.parametrize(("gem_p", "centre"), POOLINGS)
def test_catalog_photos_are_embedded_and_labelled_on_onnx_runtime_matching_tensorflow(
    butterflies, settings, monkeypatch, caplog, gem_p, centre
) -> None:  # type: ignore[no-untyped-def]
    """Imports and workers embed catalog photos on ONNX Runtime by default: vectors and
    labels within 1e-4 of TensorFlow's for real photos, and each photo's top labels the
    same; set to tensorflow, or when a conversion does not match, TensorFlow."""
    from gallery.vision import onnx_query

    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GEM_P": gem_p, "CENTRE_REGION": centre}
    backbone = pipeline.current_backbone()
    assert backbone.centre == centre
    photos = [pipeline.decode(p.read_bytes()).image for s in ("002", "007") for p in butterflies[s][:3]]
    inputs = np.stack([pipeline.network_input(p, backbone=backbone) for p in photos])
    reference_vectors, reference_probs = backbone.tensorflow_embed_and_label_arrays(inputs)
    assert reference_probs is not None
    pipeline._runtimes.clear()
    try:
        backbone.use_forward_runtime(None)
        vectors, probs = pipeline.embed_and_label_images(photos, backbone=backbone)
        assert backbone.forward_runtime == "onnx"
        assert probs is not None
        assert np.abs(vectors - reference_vectors).max() <= 1e-4
        assert np.abs(probs - reference_probs).max() <= 1e-4
        assert (np.argsort(-probs, axis=1)[:, :3] == np.argsort(-reference_probs, axis=1)[:, :3]).all()
        assert np.abs(pipeline.embed_images(photos, backbone=backbone) - reference_vectors).max() <= 1e-4
        # a search photo finds its own catalog vector first
        assert int(np.argmax(vectors @ pipeline.embed_query(photos[4], backbone=backbone))) == 4

        pipeline._runtimes.clear()
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "EMBED_RUNTIME": "tensorflow"}
        pipeline.embed_images(photos[:1], backbone=backbone)
        assert backbone.forward_runtime == "tensorflow"

        pipeline._runtimes.clear()
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "EMBED_RUNTIME": "onnx"}
        monkeypatch.setattr(onnx_query, "TOLERANCE", -1.0)  # no conversion can match: TensorFlow stays
        with caplog.at_level("WARNING"):
            vectors, _ = pipeline.embed_and_label_images(photos, backbone=backbone)
        assert backbone.forward_runtime == "tensorflow"
        assert "TensorFlow embeds catalog photos" in caplog.text
        assert np.abs(vectors - reference_vectors).max() <= 1e-6
    finally:
        backbone.use_forward_runtime(None)
        pipeline._runtimes.clear()
