"""The configured embedding pipeline of this process: backbone and preprocessing.

Settings decide the backbone; it is built once per process and shared by the web
process (query images) and the worker (catalog images), so both embed identically.
"""

from __future__ import annotations

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from .models import CatalogState
from .vision.backbones import Backbone, load_backbone
from .vision.preprocess import DecodedImage, PreprocessOptions, decode_image


def current_backbone() -> Backbone:
    conf = settings.IMAGESEARCH
    return load_backbone(conf["BACKBONE"], resnet50_weights=conf["RESNET50_WEIGHTS"] or None)


def preprocess_options() -> PreprocessOptions:
    conf = settings.IMAGESEARCH
    return PreprocessOptions(grayscale=conf["GRAYSCALE"], denoise=conf["DENOISE"])


def decode(data: bytes) -> DecodedImage:
    return decode_image(data, max_pixels=settings.IMAGESEARCH["MAX_PIXELS"])


def embed_images(images: list[PILImage.Image], *, backbone: Backbone | None = None) -> np.ndarray:
    backbone = backbone or current_backbone()
    return backbone.embed(images, batch_size=settings.IMAGESEARCH["BATCH_SIZE"], options=preprocess_options())


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
