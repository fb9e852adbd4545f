from django.contrib import admin
from django.utils.html import format_html

from .models import Embedding, Image, Reduction


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("thumb", "__str__", "status", "format", "width", "height", "uploaded_by", "created_at")
    list_filter = ("status", "format", "created_at")
    search_fields = ("title", "original_name", "checksum")
    readonly_fields = (
        "checksum",
        "size",
        "width",
        "height",
        "format",
        "status",
        "status_reason",
        "claimed_at",
        "claimed_by",
        "attempts",
        "created_at",
        "updated_at",
    )

    @admin.display(description="")
    def thumb(self, obj: Image) -> str:
        return format_html('<img src="{}" alt="" style="height:48px">', obj.thumbnail.url) if obj.thumbnail else ""


@admin.register(Embedding)
class EmbeddingAdmin(admin.ModelAdmin):
    list_display = ("image", "backbone", "dim", "created_at")
    list_filter = ("backbone",)
    raw_id_fields = ("image",)
    exclude = ("vector",)


@admin.register(Reduction)
class ReductionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "backbone", "dims", "whiten", "fitted_on", "explained_variance_ratio", "is_active", "activated_at")
    list_filter = ("backbone", "is_active")
    exclude = ("mean", "components", "explained_variance")


# ---------------------------------------------------------------- copyright monitoring
from .models import CopyMatch, MatchDecision, ProtectedWork  # noqa: E402


@admin.register(ProtectedWork)
class ProtectedWorkAdmin(admin.ModelAdmin):
    list_display = ("title", "rights_holder", "reference", "status", "scanned_at", "created_at")
    list_filter = ("status", "rights_holder")
    search_fields = ("title", "rights_holder", "reference", "checksum")
    readonly_fields = ("checksum", "width", "height", "status", "status_reason", "scanned_at", "created_at")


class MatchDecisionInline(admin.TabularInline):
    model = MatchDecision
    extra = 0
    can_delete = False
    readonly_fields = ("action", "hid_upload", "note", "decided_by", "created_at")


@admin.register(CopyMatch)
class CopyMatchAdmin(admin.ModelAdmin):
    """Read-only: decisions are taken on the review pages, where they are recorded."""

    list_display = ("__str__", "work", "score", "status", "found_by", "created_at")
    list_filter = ("status", "found_by")
    raw_id_fields = ("work", "image")
    readonly_fields = ("work", "image", "score", "signals", "status", "found_by", "created_at", "decided_at")
    inlines = [MatchDecisionInline]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False
