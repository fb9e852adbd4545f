"""The configured embedding pipeline of this process: backbone and preprocessing.

Settings decide the backbone; it is built once per process and shared by the web
process (query images) and the worker (catalog images), so both embed identically.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from gallery.monitoring import metrics
from gallery.search.models import CatalogState
from gallery.vision import onnx_query
from gallery.vision.backbones import Backbone, embedding_name, load_backbone
from gallery.vision.batching import MicroBatcher
from gallery.vision.preprocess import DecodedImage, ImageDecodeError, PreprocessOptions, decode_image


def current_backbone() -> Backbone:
    conf = settings.IMAGESEARCH
    return load_backbone(
        conf["BACKBONE"],
        resnet50_weights=conf["RESNET50_WEIGHTS"] or None,
        gem_p=conf["GEM_P"],
        centre=conf["CENTRE_REGION"],
    )


def configured_name(network: str) -> str:
    """The embedding name a re-embed to `network` produces: the network with the
    configured pooling."""
    conf = settings.IMAGESEARCH
    return embedding_name(network, float(conf["GEM_P"]), bool(conf["CENTRE_REGION"]))


def preprocess_options() -> PreprocessOptions:
    conf = settings.IMAGESEARCH
    return PreprocessOptions(grayscale=conf["GRAYSCALE"], denoise=conf["DENOISE"])


def decode(data: bytes, *, enough: tuple[float, float] | None = None) -> DecodedImage:
    """Decode an upload's first frame within the per-decode memory budget, at most
    DECODE_CONCURRENCY at a time in this process (`enough` as for `decode_image`)."""
    conf = settings.IMAGESEARCH
    return decode_image(
        data,
        max_pixels=conf["MAX_PIXELS"],
        max_memory=conf["DECODE_MEMORY_MB"] * 2**20,
        enough=enough,
        gate=_decode_turn(),
    )


_slots_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


def _decode_slots() -> threading.BoundedSemaphore:
    global _slots
    size = max(1, int(settings.IMAGESEARCH["DECODE_CONCURRENCY"]))
    with _slots_lock:
        if _slots is None or _slots[0] != size:
            _slots = (size, threading.BoundedSemaphore(size))
        return _slots[1]


@contextlib.contextmanager
def _decode_turn() -> Iterator[None]:
    slots = _decode_slots()
    if not slots.acquire(timeout=settings.IMAGESEARCH["DECODE_WAIT_SECONDS"]):
        raise ImageDecodeError(
            "The server is busy decoding other photos; nothing was stored. Please try again in a moment.", code="server_busy"
        )
    try:
        yield
    finally:
        slots.release()


# Which backbone object of each name has had each runtime installed in this process:
# (kind, name) → backbone.
_runtimes: dict[tuple[str, str], Backbone] = {}
_runtimes_lock = threading.Lock()


def _runtime_once(backbone: Backbone, kind: str, install: Callable[[], None]) -> Backbone:
    """`install()` the runtime of this `kind` on `backbone` once per process and backbone object."""
    with _runtimes_lock:
        if _runtimes.get((kind, backbone.name)) is not backbone:
            install()
            _runtimes[(kind, backbone.name)] = backbone
    return backbone


def embedding_backbone(backbone: Backbone) -> Backbone:
    """`backbone` as catalog photos are embedded: with EMBED_RUNTIME onnx, its vectors and
    labels on ONNX Runtime, converted once per process and used only within
    onnx_query.TOLERANCE of TensorFlow's."""
    onnx = settings.IMAGESEARCH["EMBED_RUNTIME"] == "onnx"
    build = onnx_query.build_forward if onnx else None
    return _runtime_once(backbone, "forward", lambda: backbone.use_forward_runtime(build(backbone) if build else None))


def embed_images(images: list[PILImage.Image], *, backbone: Backbone | None = None) -> np.ndarray:
    backbone = embedding_backbone(backbone or current_backbone())
    vectors = backbone.embed(images, batch_size=settings.IMAGESEARCH["BATCH_SIZE"], options=preprocess_options())
    metrics.embeddings.labels(backbone=backbone.name).inc(len(images))
    return vectors


@dataclass(frozen=True)
class _QueryPath:
    """How this process embeds one backbone's query photos."""

    backbone: Backbone
    batcher: MicroBatcher
    runtime: str  # onnx | tensorflow


_query_paths: dict[str, _QueryPath] = {}
_query_paths_lock = threading.Lock()


def _query_path(backbone: Backbone) -> _QueryPath:
    with _query_paths_lock:
        path = _query_paths.get(backbone.name)
        if path is None or path.backbone is not backbone:
            conf = settings.IMAGESEARCH
            threads = max(0, int(conf["QUERY_THREADS"]))
            forward = onnx_query.build(backbone, threads=threads) if conf["QUERY_RUNTIME"] == "onnx" else None
            batcher = MicroBatcher(
                forward or backbone.tensorflow_embed_arrays,
                max_batch=max(1, int(conf["QUERY_BATCH_MAX"])),
                window=max(0.0, float(conf["QUERY_BATCH_WINDOW_MS"])) / 1000.0,
            )
            path = _QueryPath(backbone, batcher, "onnx" if forward is not None else "tensorflow")
            _query_paths[backbone.name] = path
        return path


def _query_batcher(backbone: Backbone) -> MicroBatcher:
    return _query_path(backbone).batcher


def query_runtime(backbone: Backbone) -> str:
    """Which runtime embeds this process's query photos: onnx or tensorflow."""
    return _query_path(backbone).runtime


def copy_check_backbone() -> Backbone:
    """The configured backbone as copy checks run it: with QUERY_RUNTIME onnx, its feature
    maps (each upload's and work's forward passes) on ONNX Runtime, converted once per
    process and used only within onnx_query.TOLERANCE of TensorFlow's maps."""
    backbone = current_backbone()
    onnx = settings.IMAGESEARCH["QUERY_RUNTIME"] == "onnx"
    build = onnx_query.build_maps if onnx else None
    return _runtime_once(backbone, "maps", lambda: backbone.use_maps_runtime(build(backbone) if build else None))


def embed_query(image: PILImage.Image, *, backbone: Backbone | None = None) -> np.ndarray:
    """One query photo's embedding. Photos searched at the same moment by other requests
    of this process share one forward pass (`gallery.vision.batching`); the vector is
    the one `embed_images` gives the same photo."""
    backbone = backbone or current_backbone()
    photo = backbone.preprocess(image, preprocess_options())
    vector = _query_batcher(backbone)(photo)
    metrics.embeddings.labels(backbone=backbone.name).inc()
    return vector


def network_input(image: PILImage.Image, *, backbone: Backbone) -> np.ndarray:
    """The backbone's input for a decoded picture (resized, cropped, uint8), made ahead of
    the forward pass, possibly in another thread."""
    return backbone.preprocess(image, preprocess_options())


def embed_and_label_inputs(inputs: np.ndarray, *, backbone: Backbone) -> tuple[np.ndarray, np.ndarray | None]:
    """`embed_and_label_images` for network inputs made by `network_input`, in the same
    batches, so the vectors are the same."""
    backbone = embedding_backbone(backbone)
    batch_size = settings.IMAGESEARCH["BATCH_SIZE"]
    feats, probs = [], []
    for start in range(0, len(inputs), batch_size):
        f, p = backbone.embed_and_label_arrays(inputs[start : start + batch_size])
        feats.append(f)
        if p is not None:
            probs.append(p)
    metrics.embeddings.labels(backbone=backbone.name).inc(len(inputs))
    if not feats:
        return np.zeros((0, backbone.dim), dtype=np.float32), None
    return np.concatenate(feats), (np.concatenate(probs) if probs else None)


class StageClock:
    """Seconds spent in each stage of an import, summed over the threads that ran it (stages
    that overlap add up to more than the wall time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed


def clock_stage(clock: StageClock | None, name: str) -> contextlib.AbstractContextManager[None]:
    """`clock.stage(name)`, or nothing when no one is timing."""
    return clock.stage(name) if clock is not None else contextlib.nullcontext()


def embed_and_label_images(
    images: list[PILImage.Image], *, backbone: Backbone | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings and ImageNet class probabilities from one forward pass (no
    probabilities when the backbone has no classifier)."""
    backbone = embedding_backbone(backbone or current_backbone())
    result = backbone.embed_and_label(images, batch_size=settings.IMAGESEARCH["BATCH_SIZE"], options=preprocess_options())
    metrics.embeddings.labels(backbone=backbone.name).inc(len(images))
    return result


# ---- catalog curation: the catalog's persisted backbone


def backbone_named(name: str) -> Backbone:
    """A backbone by name, built once per process (ResNet50 from the configured weights)."""
    return load_backbone(name, resnet50_weights=settings.IMAGESEARCH["RESNET50_WEIGHTS"] or None)


def catalog_state() -> CatalogState:
    """The catalog's search space; the configured backbone is only its initial value."""
    state = CatalogState.objects.filter(pk=1).first()
    if state is None:
        state, _ = CatalogState.objects.get_or_create(pk=1, defaults={"backbone": current_backbone().name})
    return state


def catalog_backbone() -> Backbone:
    """The backbone the catalog is searched with (settings decide it only until a re-embed)."""
    return backbone_named(catalog_state().backbone)
