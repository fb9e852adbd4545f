"""The copyright admin: protected works (deleted through the service that keeps the audit
trail), read-only matches and the decision log."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from gallery.copyright import services as copyright_services

# ---------------------------------------------------------------- copyright monitoring
from gallery.copyright.models import CopyMatch, MatchDecision, ProtectedWork


@admin.register(ProtectedWork)
class ProtectedWorkAdmin(admin.ModelAdmin):
    list_display = ("title", "rights_holder", "reference", "status", "scanned_at", "created_at")
    list_filter = ("status", "rights_holder")
    search_fields = ("title", "rights_holder", "reference", "checksum")
    readonly_fields = ("original", "checksum", "width", "height", "status", "status_reason", "scanned_at", "created_at")
    # The original is private: the admin links to the staff-only view instead of a file URL.
    exclude = ("file",)

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False  # works are registered on the copyright pages, which compute their signatures

    def delete_model(self, request: HttpRequest, obj: ProtectedWork) -> None:
        copyright_services.protected_work_delete(work_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ProtectedWork]) -> None:
        for pk in queryset.values_list("pk", flat=True):
            copyright_services.protected_work_delete(work_id=pk)

    @admin.display(description="original")
    def original(self, work: ProtectedWork) -> str:
        url = reverse("gallery:copyright_work_file", args=[work.pk])
        return format_html('<a href="{}"><img src="{}" alt="" style="max-width:320px"></a>', url, url)


class MatchDecisionInline(admin.TabularInline):
    model = MatchDecision
    extra = 0
    can_delete = False
    fields = ("action", "hid_upload", "published_upload", "note", "decided_by", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _score_text(score: float | None) -> str:
    return "—" if score is None else f"{score:.3f}"


@admin.register(MatchDecision)
class MatchDecisionAdmin(admin.ModelAdmin):
    """The audit trail: read-only, kept when a work or an upload is deleted."""

    list_display = ("created_at", "action", "work_title", "rights_holder", "image_title", "score_text", "decided_by", "match")
    list_filter = ("action",)
    search_fields = ("work_title", "rights_holder", "image_title", "note", "work_checksum", "image_checksum")
    exclude = ("work_thumbnail", "image_thumbnail", "score")
    readonly_fields = ("score_text",)

    @admin.display(description="score", ordering="score")
    def score_text(self, decision: MatchDecision) -> str:
        return _score_text(decision.score)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CopyMatch)
class CopyMatchAdmin(admin.ModelAdmin):
    """Read-only: decisions are taken on the review pages, where they are recorded."""

    list_display = ("__str__", "work", "score_text", "status", "found_by", "created_at")
    list_filter = ("status", "found_by")
    raw_id_fields = ("work", "image")
    readonly_fields = ("work", "image", "score_text", "signals", "status", "found_by", "created_at", "decided_at")
    exclude = ("score",)
    inlines = [MatchDecisionInline]

    @admin.display(description="score", ordering="score")
    def score_text(self, match: CopyMatch) -> str:
        return f"{match.score:.3f}"

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False
