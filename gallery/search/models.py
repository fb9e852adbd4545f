"""Search spaces: the catalog's persisted backbone, fitted PCA reductions and the vectors
they project."""

from __future__ import annotations

from django.db import models

from gallery.catalog.models import Image
from gallery.vector_field import VectorBytesField


class Reduction(models.Model):
    """A fitted PCA for one backbone. Exactly one per backbone is active at a time."""

    backbone = models.CharField(max_length=40, db_index=True)
    version = models.PositiveIntegerField()
    dims = models.PositiveIntegerField()
    input_dim = models.PositiveIntegerField()
    whiten = models.BooleanField(default=False)
    fitted_on = models.PositiveIntegerField(help_text="number of embeddings it was fitted on")
    mean = models.BinaryField()
    components = models.BinaryField()
    explained_variance = models.BinaryField()
    explained_variance_ratio = models.FloatField(help_text="total variance kept")
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["backbone", "version"], name="reduction_version_per_backbone"),
            models.UniqueConstraint(
                fields=["backbone"], condition=models.Q(is_active=True), name="one_active_reduction_per_backbone"
            ),
        ]
        ordering = ["backbone", "-version"]

    def __str__(self) -> str:
        return f"{self.backbone} PCA-{self.dims} v{self.version}"


class ReducedVector(models.Model):
    """An image's embedding projected by one Reduction."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reduced_vectors")
    reduction = models.ForeignKey(Reduction, on_delete=models.CASCADE, related_name="vectors")
    # float32 bytes in Python; a pgvector column on PostgreSQL (HNSW-indexed per reduction).
    vector = VectorBytesField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "reduction"], name="one_vector_per_reduction")]

    def __str__(self) -> str:
        return f"image {self.image_id} in reduction {self.reduction_id}"


class CatalogState(models.Model):
    """The catalog's search space, persisted so that every process agrees on it.

    `backbone` is the one search uses; `target_backbone` is set while a re-embed
    migration computes the next one. Created on first use from settings.
    """

    backbone = models.CharField(max_length=40)
    target_backbone = models.CharField(max_length=40, blank=True)
    switched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "catalog state"

    def __str__(self) -> str:
        return f"{self.backbone} → {self.target_backbone}" if self.target_backbone else self.backbone
