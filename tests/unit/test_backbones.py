"""The two backbones: a correct Lite0 port, ResNet50 from a local weights file, auto choice."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data as skdata

from gallery.vision.backbones import (
    EFFICIENTNET_LITE0,
    RESNET50,
    backbone_availability,
    build_resnet50,
    embedding_name,
    gem_pool,
    lite0_weights_path,
    load_backbone,
    network_of,
    parse_embedding_name,
)
from gallery.vision.torch_weights import CheckpointFormatError, load_legacy_state_dict

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0():  # type: ignore[no-untyped-def]
    return load_backbone(EFFICIENTNET_LITE0)


def test_lite0_checkpoint_reads_without_torch() -> None:
    state = load_legacy_state_dict(lite0_weights_path())
    assert len(state) == 296
    params = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert 4_600_000 < params < 4_700_000
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)


def test_checkpoint_reader_refuses_arbitrary_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pickle

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(CheckpointFormatError, match="refusing"):
        load_legacy_state_dict(evil)


@pytest.mark.parametrize(("name", "expected"), [("chelsea", CAT_CLASSES), ("coffee", {ESPRESSO})])
def test_lite0_classifies_imagenet_examples(lite0, name: str, expected: set[int]) -> None:  # type: ignore[no-untyped-def]
    image = PILImage.fromarray(getattr(skdata, name)())
    logits = lite0.classify(lite0.preprocess(image)[None])[0]
    top5 = set(np.argsort(-logits)[:5].tolist())
    assert top5 & expected, f"{name}: top-5 {sorted(top5)}"
    assert int(np.argmax(logits)) in expected


def test_lite0_embeddings_are_normalised_and_batched_consistently(lite0) -> None:  # type: ignore[no-untyped-def]
    images = [PILImage.fromarray(skdata.chelsea()), PILImage.fromarray(skdata.coffee()), PILImage.fromarray(skdata.astronaut())]
    together = lite0.embed(images, batch_size=3)
    apart = np.concatenate([lite0.embed([im]) for im in images])
    assert together.shape == (3, 1280) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, apart, atol=1e-4)
    assert float(together[0] @ together[1]) < 0.9  # a cat is not an espresso


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A ResNet50 weights file saved by the test (no ImageNet download is possible here)."""
    import keras

    keras.utils.set_random_seed(7)
    model = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    model.save_weights(str(path))
    x = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3)).astype(np.float32)
    fmap = keras.Model(model.input, model.layers[-2].output)(
        x[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    )
    expected = gem_pool(np.asarray(fmap))
    return path, x, expected


def test_resnet50_loads_a_local_weights_file(resnet_weights) -> None:  # type: ignore[no-untyped-def]
    path, x, expected = resnet_weights
    backbone = build_resnet50(path)
    assert backbone.name == RESNET50 and backbone.dim == 2048
    got = backbone.embed_arrays(x.astype(np.uint8))
    want = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-4)


def test_auto_prefers_resnet50_when_its_weights_load(resnet_weights) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = resnet_weights
    assert load_backbone("auto", resnet50_weights=str(path)).name == RESNET50


def test_auto_falls_back_to_lite0_with_a_warning(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING):
        backbone = load_backbone("auto", resnet50_weights=str(tmp_path / "missing.weights.h5"))
    assert backbone.name == EFFICIENTNET_LITE0
    assert "efficientnet_lite0" in caplog.text


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("vgg16")


def test_feature_maps_pool_to_the_global_descriptor(lite0) -> None:  # type: ignore[no-untyped-def]
    x = lite0.preprocess(PILImage.fromarray(skdata.chelsea()))[None]
    fmap = lite0.feature_maps(x)
    assert fmap.shape == (1, 7, 7, 1280)
    pooled = gem_pool(fmap)
    assert not np.allclose(
        pooled / np.linalg.norm(pooled), fmap.mean(axis=(1, 2)) / np.linalg.norm(fmap.mean(axis=(1, 2))), atol=1e-3
    )
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled), lite0.embed_arrays(x), atol=1e-5)
    big = np.asarray(PILImage.fromarray(skdata.chelsea()).resize((448, 448)))[None]
    assert lite0.feature_maps(big).shape == (1, 14, 14, 1280)


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_deeper_lite_variants_port_correctly(variant: str) -> None:
    """Lite1 and Lite2 are built from their packages' weights like Lite0 and pass the
    same checks: the cat is a cat, the coffee espresso, embeddings unit length at 1280-d."""
    from gallery.vision.backbones import SPECS, lite_weights_path

    state = load_legacy_state_dict(lite_weights_path(variant))
    assert len(state) > 296  # deeper than Lite0
    backbone = load_backbone(variant)
    assert backbone.spec == SPECS[variant] and backbone.spec.input_size in (240, 260)
    for name, expected in (("chelsea", CAT_CLASSES), ("coffee", {ESPRESSO})):
        image = PILImage.fromarray(getattr(skdata, name)())
        logits = backbone.classify(backbone.preprocess(image)[None])[0]
        assert int(np.argmax(logits)) in expected, (variant, name, int(np.argmax(logits)))
    vectors = backbone.embed([PILImage.fromarray(skdata.chelsea()), PILImage.fromarray(skdata.coffee())])
    assert vectors.shape == (2, 1280) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_vectors_of_each_pooling_are_named_apart_and_share_one_network(lite0) -> None:  # type: ignore[no-untyped-def]
    assert embedding_name(EFFICIENTNET_LITE0, 3.0) == EFFICIENTNET_LITE0  # catalogs embedded before keep their name
    assert embedding_name(EFFICIENTNET_LITE0, 2.0) == "efficientnet_lite0-gem2"
    assert embedding_name(EFFICIENTNET_LITE0, 2.0, True) == "efficientnet_lite0-gem2-centre"
    assert embedding_name(EFFICIENTNET_LITE0, 3.0, True) == "efficientnet_lite0-gem3-centre"
    assert parse_embedding_name("efficientnet_lite0-gem2.5") == (EFFICIENTNET_LITE0, 2.5, False)
    assert parse_embedding_name("efficientnet_lite0-gem2-centre") == (EFFICIENTNET_LITE0, 2.0, True)
    assert parse_embedding_name("efficientnet_lite0-gem3-centre") == (EFFICIENTNET_LITE0, 3.0, True)
    assert parse_embedding_name(EFFICIENTNET_LITE0) == (EFFICIENTNET_LITE0, 3.0, False)
    assert network_of("efficientnet_lite0-gem2") == EFFICIENTNET_LITE0
    assert network_of("efficientnet_lite0-gem2-centre") == EFFICIENTNET_LITE0
    for bad in (
        "efficientnet_lite0-gem0",
        "efficientnet_lite0-gem2.0",
        "efficientnet_lite0-gemx",
        "efficientnet_lite0-gem3",
        "efficientnet_lite0-gem2-corners",
        "efficientnet_lite0-gem2-",
        "efficientnet_lite0-gem-centre",
    ):
        with pytest.raises(ValueError):
            parse_embedding_name(bad)
    assert backbone_availability("efficientnet_lite0-gem2").available
    assert backbone_availability("efficientnet_lite0-gem2-centre").available

    gem2 = load_backbone(EFFICIENTNET_LITE0, gem_p=2.0)  # as the settings name it
    assert gem2.name == "efficientnet_lite0-gem2" and gem2.network == EFFICIENTNET_LITE0
    assert load_backbone("efficientnet_lite0-gem2") is gem2  # as the catalog names it
    centred = load_backbone(EFFICIENTNET_LITE0, gem_p=2.0, centre=True)
    assert centred.name == "efficientnet_lite0-gem2-centre" and centred.centre and not gem2.centre
    assert load_backbone("efficientnet_lite0-gem2-centre") is centred
    assert load_backbone(EFFICIENTNET_LITE0) is lite0 and lite0.gem_p == 3.0
    assert gem2._spatial is lite0._spatial is centred._spatial  # one network in memory, not three

    image = PILImage.fromarray(skdata.chelsea())
    batch = np.stack([lite0.preprocess(image), lite0.preprocess(image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT))])
    maps = lite0.feature_maps(batch)
    for backbone, p, centre in ((gem2, 2.0, False), (lite0, 3.0, False), (centred, 2.0, True)):
        expected = gem_pool(maps, p, centre)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(backbone.embed_arrays(batch), expected, atol=1e-5)
        vectors, probs = backbone.embed_and_label_arrays(batch)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        assert probs is not None and int(np.argmax(probs[0])) in CAT_CLASSES
    assert float(np.abs(gem2.embed_arrays(batch) - lite0.embed_arrays(batch)).max()) > 1e-3
    assert float(np.abs(centred.embed_arrays(batch) - gem2.embed_arrays(batch)).max()) > 1e-3


def test_the_centre_region_is_the_map_without_its_outer_ring() -> None:
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.0, 6.0, size=(2, 7, 7, 16)).astype(np.float32)
    whole = gem_pool(maps, 2.0)
    inner = gem_pool(maps[:, 1:6, 1:6], 2.0)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(gem_pool(maps, 2.0, True), unit(whole) + unit(inner), rtol=1e-5)
    # The ring counts only in the whole map's half: blanking seven of its cells moves the
    # descriptor less than blanking seven cells of the middle.
    ring = maps.copy()
    ring[:, 0, :] = 0.0
    middle = maps.copy()
    middle[:, 2, 1:6] = 0.0
    middle[:, 3, 1:3] = 0.0
    base = unit(gem_pool(maps, 2.0, True))
    moved_ring = np.linalg.norm(unit(gem_pool(ring, 2.0, True)) - base)
    moved_middle = np.linalg.norm(unit(gem_pool(middle, 2.0, True)) - base)
    assert moved_middle > moved_ring


def test_input_scaling_gives_the_networks_formulas_and_leaves_the_pixels_alone() -> None:
    from gallery.vision.backbones import _lite0_normalise, _resnet50_normalise

    pixels = np.random.default_rng(3).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    before = pixels.copy()
    lite = _lite0_normalise(pixels)
    assert lite.dtype == np.float32
    assert np.array_equal(lite, (pixels.astype(np.float32) - 127.0) / 128.0)  # exactly: 1/128 is a power of two
    caffe = _resnet50_normalise(pixels)
    assert caffe.dtype == np.float32
    assert np.array_equal(caffe, pixels[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32))
    floats = pixels.astype(np.float32)
    _lite0_normalise(floats)
    _resnet50_normalise(floats)
    assert np.array_equal(pixels, before) and np.array_equal(floats, before.astype(np.float32))  # inputs unchanged


def test_a_failed_resnet50_download_says_so_on_standard_error_not_in_a_commands_output(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """`benchmark --json` and the like print their results on standard output: Keras'
    download notice must not land in the middle of them."""
    import keras

    from gallery.vision.backbones import BackboneUnavailable

    def offline(**kwargs: object) -> None:
        print("Downloading data from https://storage.example/resnet50_notop.h5")
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(BackboneUnavailable, match="not cached and cannot be downloaded"):
        build_resnet50()
    out, err = capsys.readouterr()
    assert out == "" and "Downloading data" in err
