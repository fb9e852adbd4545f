"""Every model of the product, by domain: Django registers an app's models from here.
Code imports a model from its domain's module."""

from .catalog.models import LANE_BULK, LANE_INTERACTIVE, CatalogChange, Embedding, Image, ImageLabel, Tag
from .copyright.models import CopyMatch, MatchDecision, ProtectedWork, WorkSignature
from .curation.models import CatalogJob, DuplicateGroup
from .operations.models import BackupRecord
from .search.models import CatalogState, ReducedVector, Reduction

__all__ = [
    "LANE_BULK",
    "LANE_INTERACTIVE",
    "BackupRecord",
    "CatalogChange",
    "CatalogJob",
    "CatalogState",
    "CopyMatch",
    "DuplicateGroup",
    "Embedding",
    "Image",
    "ImageLabel",
    "MatchDecision",
    "ProtectedWork",
    "ReducedVector",
    "Reduction",
    "Tag",
    "WorkSignature",
]
