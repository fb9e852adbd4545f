"""The query path's forward pass on ONNX Runtime.

A backbone's traced descriptor graph (the same Keras network and GeM pooling TensorFlow
runs for the catalog) is converted in memory with tf2onnx and run by ONNX Runtime, which
embeds a lone photo several times faster than TensorFlow on a CPU. TensorFlow stays the
reference: a converted graph is used only after it reproduces TensorFlow's descriptors
within `TOLERANCE` on a fixed check batch, so query and catalog vectors stay comparable;
otherwise the caller keeps TensorFlow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np

from .backbones import Backbone, l2_normalise

log = logging.getLogger(__name__)

TOLERANCE = 1e-4


def _quiet_converters() -> None:
    """tf2onnx reports each optimisation pass at INFO; only its warnings matter here."""
    for name in ("tf2onnx", "onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_photos(height: int, width: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n photo-like inputs (smooth gradients and noise) of one size, uint8."""
    base = (
        np.linspace(0, 255, width, dtype=np.float32)[None, :, None] + np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    ) / 2
    return np.clip(base[None] + rng.normal(0, 40, size=(n, height, width, 3)), 0, 255).astype(np.uint8)


def check_batch(backbone: Backbone, n: int = 4) -> np.ndarray:
    """A fixed batch of photo-like inputs of the backbone's input size, uint8."""
    size = backbone.spec.input_size
    return check_photos(size, size, n, np.random.default_rng(7))


def _accepted(what: str, backbone: Backbone, difference: float, started: float, *, fallback: str) -> bool:
    """Whether a conversion's measured `difference` from TensorFlow is within TOLERANCE
    (logged either way; `fallback` says what TensorFlow keeps doing otherwise)."""
    if not difference <= TOLERANCE:
        log.warning(
            "ONNX Runtime's %s %s differ from TensorFlow's by %.2g (> %g); %s",
            backbone.name,
            what,
            difference,
            TOLERANCE,
            fallback,
        )
        return False
    log.debug(
        "%s %s on ONNX Runtime (converted in %.1f s, within %.1g of TensorFlow)",
        backbone.name,
        what,
        time.perf_counter() - started,
        difference,
    )
    return True


def _session(graph: Callable[..., object], spec: object, threads: int, what: str) -> object | None:
    """An ONNX Runtime session of a traced graph, or None (logged) when it cannot be made."""
    try:
        import onnxruntime as ort
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        log.info("ONNX Runtime not available for %s (%s); TensorFlow runs them", what, exc)
        return None
    _quiet_converters()
    try:
        proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: graph(x)), input_signature=spec, opset=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.log_severity_level = 3
        # Idle runtime threads sleep instead of spinning: each session shares the cores with
        # other threads of its process (an import's decoding threads, other requests), and
        # spinning took their CPU (an import of 320 photos: 80 → 92 photos/s without it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # any converter or runtime failure leaves TensorFlow in charge
        log.warning("%s could not run on ONNX Runtime (%s); TensorFlow runs them", what, exc)
        return None


def build(backbone: Backbone, *, threads: int = 0) -> Callable[[np.ndarray], np.ndarray] | None:
    """`backbone.embed_arrays` on ONNX Runtime, or None when the runtime is not installed,
    the conversion fails or its descriptors differ from TensorFlow's by more than TOLERANCE."""
    import tensorflow as tf

    size = backbone.spec.input_size
    started = time.perf_counter()
    spec = (tf.TensorSpec([None, size, size, 3], tf.float32, name="photos"),)
    session = _session(backbone.pooled_function, spec, threads, f"the {backbone.name} query graph")
    if session is None:
        return None
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    normalise = backbone.normalise

    def embed(batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] == 0:
            return np.zeros((0, backbone.dim), dtype=np.float32)
        x = normalise(np.asarray(batch))
        return l2_normalise(np.asarray(session.run(None, {name: x})[0], dtype=np.float32))  # type: ignore[attr-defined]

    sample = check_batch(backbone)
    difference = float(np.abs(embed(sample) - backbone.tensorflow_embed_arrays(sample)).max())
    if not _accepted("descriptors", backbone, difference, started, fallback="TensorFlow embeds queries"):
        return None
    return embed


def build_forward(backbone: Backbone, *, threads: int = 0) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None:
    """The catalog's forward pass on ONNX Runtime, for `Backbone.use_forward_runtime`:
    normalised float32 in, the pooled descriptors and (with a classifier) the class
    probabilities of one pass out. None when the runtime is missing, the conversion fails
    or, on a check batch, its vectors or probabilities differ from TensorFlow's by more
    than TOLERANCE."""
    import tensorflow as tf

    size = backbone.spec.input_size
    started = time.perf_counter()
    spec = (tf.TensorSpec([None, size, size, 3], tf.float32, name="photos"),)
    labelled = backbone.labelled_function
    graph = labelled if labelled is not None else backbone.pooled_function
    session = _session(graph, spec, threads, f"the {backbone.name} catalog graph")
    if session is None:
        return None
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})  # type: ignore[attr-defined]
        probs = np.asarray(out[1], dtype=np.float32) if labelled is not None else None
        return np.asarray(out[0], dtype=np.float32), probs

    sample = check_batch(backbone)
    vectors, probs = run(backbone.normalise(sample))
    ref_vectors, ref_probs = backbone.tensorflow_embed_and_label_arrays(sample)
    difference = float(np.abs(l2_normalise(vectors) - ref_vectors).max())
    if probs is not None and ref_probs is not None:
        difference = max(difference, float(np.abs(probs - ref_probs).max()))
    elif (probs is None) != (ref_probs is None):
        difference = float("inf")
    if not _accepted("catalog vectors and labels", backbone, difference, started, fallback="TensorFlow embeds catalog photos"):
        return None
    return run


# Shapes the feature-map graph is checked on: landscape, portrait and a thin strip, as the
# copy checks feed it photos fitted to a long side.
MAP_CHECK_SHAPES = ((240, 320), (320, 213), (96, 320))


def build_maps(backbone: Backbone, *, threads: int = 0) -> Callable[[np.ndarray], np.ndarray] | None:
    """The backbone's feature maps (normalised float32 of any size in) on ONNX Runtime, or
    None when the runtime is missing, the conversion fails or, on any of MAP_CHECK_SHAPES,
    its maps differ from TensorFlow's by more than TOLERANCE of their largest value."""
    import tensorflow as tf

    started = time.perf_counter()
    spec = (tf.TensorSpec([None, None, None, 3], tf.float32, name="photos"),)
    session = _session(backbone.maps_function, spec, threads, f"the {backbone.name} feature maps")
    if session is None:
        return None
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]

    def maps(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0], dtype=np.float32)  # type: ignore[attr-defined]

    rng = np.random.default_rng(11)
    worst = 0.0
    for h, w in MAP_CHECK_SHAPES:
        photo = check_photos(h, w, 1, rng)
        reference = backbone.tensorflow_maps(photo)
        got = maps(backbone.normalise(photo))
        if got.shape != reference.shape:
            worst = float("inf")
            break
        worst = max(worst, float(np.abs(got - reference).max()) / max(1.0, float(np.abs(reference).max())))
    if not _accepted("feature maps (relative to their scale)", backbone, worst, started, fallback="TensorFlow computes them"):
        return None
    return maps
