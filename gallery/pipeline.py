"""The configured embedding pipeline of this process: backbone and preprocessing.

Settings decide the backbone; it is built once per process and shared by the web
process (query images) and the worker (catalog images), so both embed identically.
"""

from __future__ import annotations

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

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


def embed_images(images: list[PILImage.Image]) -> np.ndarray:
    backbone = current_backbone()
    return backbone.embed(images, batch_size=settings.IMAGESEARCH["BATCH_SIZE"], options=preprocess_options())
