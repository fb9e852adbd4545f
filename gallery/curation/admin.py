"""The editors' admin: the catalog with thumbnails and filters, bulk actions that each
call one service and report how many images changed, the near-duplicate review and
the catalog jobs (re-embed, refit) with their progress."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

from gallery.catalog import pipeline
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Embedding, Image, Tag
from gallery.curation import selectors as curation_selectors
from gallery.curation import services as curation_services
from gallery.curation.models import CatalogJob, DuplicateGroup
from gallery.errors import CurationError
from gallery.search import selectors as search_selectors
from gallery.search.models import Reduction
from gallery.vision.backbones import BACKBONES, parse_embedding_name


class BackboneFilter(admin.SimpleListFilter):
    title = "backbone"
    parameter_name = "backbone"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(b, b) for b in BACKBONES] + [("none", "no embedding")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        value = self.value()
        if value == "none":
            return queryset.filter(embeddings__isnull=True)
        if value:  # a network: its vectors under any pooling
            named = Q(embeddings__backbone=value) | Q(embeddings__backbone__startswith=f"{value}-gem")
            return queryset.filter(named).distinct()
        return queryset


class TagFilter(admin.SimpleListFilter):
    title = "tag"
    parameter_name = "tag"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(t, t) for t in Tag.objects.values_list("name", flat=True)[:200]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        return queryset.filter(tags__name=self.value()) if self.value() else queryset


class ImageForm(forms.ModelForm):
    tags_text = forms.CharField(label="Tags", required=False, help_text="Separated by commas, e.g. poster, monarch")

    class Meta:
        model = Image
        fields = ("title", "visibility")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["tags_text"].initial = ", ".join(self.instance.tags.values_list("name", flat=True))

    def clean_tags_text(self) -> list[str]:
        try:
            return curation_services.tags_parse(text=self.cleaned_data["tags_text"])
        except CurationError as exc:
            raise forms.ValidationError(str(exc)) from None


class BulkTagsForm(forms.Form):
    tags = forms.CharField(label="Tags", help_text="Separated by commas, e.g. poster, monarch", max_length=2000)

    def clean_tags(self) -> list[str]:
        try:
            names = curation_services.tags_parse(text=self.cleaned_data["tags"])
        except CurationError as exc:
            raise forms.ValidationError(str(exc)) from None
        if not names:
            raise forms.ValidationError("Type at least one tag.")
        return names


class PromoteLabelsForm(forms.Form):
    min_confidence = forms.IntegerField(
        label="At least (%)",
        min_value=1,
        max_value=100,
        initial=50,
        help_text="Labels the classifier is at least this sure of become tags (the label's name).",
    )


def _local_url(request: HttpRequest, url: str) -> str:
    """`url` when it stays on this site (a form's "next"), else "": no open redirects."""
    allowed = url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}, require_https=request.is_secure())
    return url if url and allowed else ""


def _ids(queryset: QuerySet[Image]) -> list[int]:
    return list(queryset.values_list("pk", flat=True))


def _preserved_query(request: HttpRequest) -> str:
    """The change list's filters, kept across the intermediate page (Django's `_changelist_filters`)."""
    kept = request.GET.urlencode()
    return f"?{kept}" if kept else ""


# Shown read-only in the "Processing" section of an image's page.
_PROCESSING_FIELDS = (
    "status",
    "status_reason",
    "backbones",
    "pca",
    "lane",
    "attempts",
    "claimed_by",
    "claimed_at",
    "embedded_by",
    "embedded_at",
)


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    form = ImageForm
    list_display = ("thumb", "__str__", "status_text", "visibility", "backbones", "pca", "tag_list", "created_at", "uploaded_by")
    list_display_links = ("thumb", "__str__")
    list_filter = ("status", "visibility", "lane", BackboneFilter, TagFilter, "created_at")
    search_fields = ("title", "original_name", "checksum", "tags__name")
    list_select_related = ("uploaded_by",)
    list_per_page = 50
    date_hierarchy = "created_at"
    actions = ("publish", "hide", "add_tags", "remove_tags", "promote_labels", "delete_images", "reembed", "retry_failed")
    fieldsets = (
        (None, {"fields": ("preview", "title", "tags_text", "visibility")}),
        ("Most similar", {"fields": ("similar",)}),
        (
            "Processing",
            {"fields": _PROCESSING_FIELDS},
        ),
        ("File", {"fields": ("original_name", "checksum", "size", "width", "height", "format", "uploaded_by", "created_at")}),
    )
    readonly_fields = (
        "preview",
        "similar",
        *_PROCESSING_FIELDS,
        "original_name",
        "checksum",
        "size",
        "width",
        "height",
        "format",
        "uploaded_by",
        "created_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Image]:
        return super().get_queryset(request).prefetch_related("tags", "embeddings", "reduced_vectors__reduction")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # images enter through the upload page or import_images

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        found = super().get_actions(request)
        found.pop("delete_selected", None)  # delete_images also removes files and vectors
        return found

    # ---- columns and detail fields

    @admin.display(description="")
    def thumb(self, obj: Image) -> str:
        return format_html('<img src="{}" alt="" style="height:64px">', obj.thumbnail_url) if obj.thumbnail else ""

    @admin.display(description="status", ordering="status")
    def status_text(self, obj: Image) -> str:
        if obj.status == Image.Status.FAILED:
            return format_html('{}<br><small style="color:#ba2121">{}</small>', obj.get_status_display(), obj.status_reason)
        return obj.get_status_display()

    @admin.display(description="backbone")
    def backbones(self, obj: Image) -> str:
        return ", ".join(sorted(e.backbone for e in obj.embeddings.all())) or "—"

    @admin.display(description="PCA")
    def pca(self, obj: Image) -> str:
        return ", ".join(f"v{rv.reduction.version} ({rv.reduction.dims}-d)" for rv in obj.reduced_vectors.all()) or "—"

    @admin.display(description="tags")
    def tag_list(self, obj: Image) -> str:
        # Wrapped, not clipped: an image can carry many tags.
        return format_html(
            '<span class="tag-list" style="display:inline-block;min-width:10em;max-width:22em;white-space:normal;overflow-wrap:anywhere">{}</span>',
            ", ".join(t.name for t in obj.tags.all()),
        )

    @admin.display(description="preview")
    def preview(self, obj: Image) -> str:
        url = obj.display_url  # the original is private; a hidden image's picture is withheld
        if not url:
            return ""
        return format_html('<a href="{0}"><img src="{0}" alt="" style="max-width:640px;max-height:480px"></a>', url)

    @admin.display(description="most similar")
    def similar(self, obj: Image) -> str:
        if obj.status != Image.Status.READY:
            return "Available once the image is ready."
        hits = search_selectors.similar_to_image(image=obj, limit=8)
        if not hits:
            return "No similar images yet."
        return format_html_join(
            "",
            '<a href="{}" style="display:inline-block;margin:0 8px 8px 0;text-align:center">'
            '<img src="{}" alt="" style="height:96px"><br>{} · {}</a>',
            (
                (reverse("admin:gallery_image_change", args=[h.image.pk]), h.image.thumbnail_url, h.image, f"{h.score:.3f}")
                for h in hits
            ),
        )

    # ---- saving goes through the services

    def save_model(self, request: HttpRequest, obj: Image, form: forms.ModelForm, change: bool) -> None:
        curation_services.image_update(image=obj, title=form.cleaned_data["title"], tags=form.cleaned_data["tags_text"])
        catalog_services.images_set_visibility(image_ids=[obj.pk], visibility=form.cleaned_data["visibility"])

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        pass  # tags were saved by image_update

    def delete_model(self, request: HttpRequest, obj: Image) -> None:
        catalog_services.images_delete(image_ids=[obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        catalog_services.images_delete(image_ids=_ids(queryset))

    # ---- bulk actions

    def _report(self, request: HttpRequest, count: int, verb: str) -> None:
        self.message_user(request, f"{count} image{'s' if count != 1 else ''} {verb}.", messages.SUCCESS)

    @admin.action(description="Publish selected images", permissions=["change"])
    def publish(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._report(
            request, catalog_services.images_set_visibility(image_ids=_ids(queryset), visibility="published"), "published"
        )

    @admin.action(description="Hide selected images", permissions=["change"])
    def hide(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._report(request, catalog_services.images_set_visibility(image_ids=_ids(queryset), visibility="hidden"), "hidden")

    def _intermediate(
        self, request: HttpRequest, queryset: QuerySet[Image], *, action: str, template: str, **extra: Any
    ) -> TemplateResponse:
        """A page between choosing an action and carrying it out (Django's delete_selected
        pattern): it posts the same selection back with `post=yes`."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "action": action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "images": list(queryset.order_by("-created_at", "-id")),
            "changelist_url": reverse("admin:gallery_image_changelist") + _preserved_query(request),
            **extra,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, template, context)

    @admin.action(description="Delete selected images (files and vectors too)", permissions=["delete"])
    def delete_images(self, request: HttpRequest, queryset: QuerySet[Image]) -> HttpResponse | None:
        if request.POST.get("post") != "yes":
            count = queryset.count()
            return self._intermediate(
                request,
                queryset,
                action="delete_images",
                template="admin/gallery/image/delete_images_confirmation.html",
                title=f"Delete {count} image{'s' if count != 1 else ''}?",
            )
        self._report(request, catalog_services.images_delete(image_ids=_ids(queryset)), "deleted")
        return None

    def _tags_action(self, request: HttpRequest, queryset: QuerySet[Image], *, adding: bool) -> HttpResponse | None:
        action, verb = ("add_tags", "Add") if adding else ("remove_tags", "Remove")
        form = BulkTagsForm(request.POST if request.POST.get("post") == "yes" else None)
        if form.is_valid():
            change = curation_services.images_add_tags if adding else curation_services.images_remove_tags
            count = change(image_ids=_ids(queryset), names=form.cleaned_data["tags"])
            names = ", ".join(form.cleaned_data["tags"])
            self._report(request, count, f"tagged {names}" if adding else f"no longer tagged {names}")
            return None
        count = queryset.count()
        return self._intermediate(
            request,
            queryset,
            action=action,
            template="admin/gallery/image/tags_form.html",
            title=f"{verb} tags {'to' if adding else 'from'} {count} image{'s' if count != 1 else ''}",
            form=form,
            verb=verb,
        )

    @admin.action(description="Add tags to selected images", permissions=["change"])
    def add_tags(self, request: HttpRequest, queryset: QuerySet[Image]) -> HttpResponse | None:
        return self._tags_action(request, queryset, adding=True)

    @admin.action(description="Remove tags from selected images", permissions=["change"])
    def remove_tags(self, request: HttpRequest, queryset: QuerySet[Image]) -> HttpResponse | None:
        return self._tags_action(request, queryset, adding=False)

    @admin.action(description="Promote labels of selected images to tags", permissions=["change"])
    def promote_labels(self, request: HttpRequest, queryset: QuerySet[Image]) -> HttpResponse | None:
        form = PromoteLabelsForm(request.POST if request.POST.get("post") == "yes" else None)
        if form.is_valid():
            percent = form.cleaned_data["min_confidence"]
            count = curation_services.images_promote_labels(image_ids=_ids(queryset), min_confidence=percent / 100)
            self._report(request, count, f"tagged with their labels at least {percent}% sure")
            return None
        count = queryset.count()
        return self._intermediate(
            request,
            queryset,
            action="promote_labels",
            template="admin/gallery/image/promote_labels_form.html",
            title=f"Promote labels of {count} image{'s' if count != 1 else ''} to tags",
            form=form,
        )

    @admin.action(description="Re-embed selected images", permissions=["change"])
    def reembed(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._report(request, curation_services.images_reembed(image_ids=_ids(queryset)), "queued for embedding")

    @admin.action(description="Retry selected failed images", permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._report(request, curation_services.images_retry_failed(image_ids=_ids(queryset)), "queued again")

    # ---- curation pages: near-duplicates and catalog jobs

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("near-duplicates/", wrap(self.near_duplicates_view), name="gallery_image_near_duplicates"),
            path("catalog/", wrap(self.catalog_view), name="gallery_image_catalog"),
            *super().get_urls(),
        ]

    def near_duplicates_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            return HttpResponse("Forbidden", status=403)
        if request.method == "POST":
            group = get_object_or_404(DuplicateGroup, pk=request.POST.get("group"))
            keep = request.POST.get("keep", "")
            try:
                count = curation_services.duplicate_group_resolve(
                    group=group, keep_id=int(keep) if keep.isdigit() else -1, action=request.POST.get("action", "")
                )
            except CurationError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self._report(request, count, "hidden" if request.POST.get("action") == "hide" else "deleted")
            return HttpResponseRedirect(reverse("admin:gallery_image_near_duplicates"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Near-duplicates",
            "opts": self.model._meta,
            "groups": curation_selectors.duplicate_groups(),
            "jobs": CatalogJob.objects.filter(kind=CatalogJob.Kind.NEAR_DUPLICATES)[:3],
        }
        return TemplateResponse(request, "admin/gallery/near_duplicates.html", context)

    def catalog_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            return HttpResponse("Forbidden", status=403)
        if request.method == "POST":
            try:
                job = curation_services.catalog_job_start(
                    kind=request.POST.get("kind", ""), backbone=request.POST.get("backbone", "")
                )
            except CurationError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"{job} started.", messages.SUCCESS)
            return HttpResponseRedirect(
                _local_url(request, request.POST.get("next", "")) or reverse("admin:gallery_image_catalog")
            )
        state = pipeline.catalog_state()
        _, pooling, pooling_centre = parse_embedding_name(state.backbone)
        configured, configured_centre = float(settings.IMAGESEARCH["GEM_P"]), bool(settings.IMAGESEARCH["CENTRE_REGION"])
        # A network is offered when re-embedding with it changes the catalog: another network,
        # or the catalog's own with the configured pooling when that differs.
        others = [
            a for name, a in curation_selectors.backbone_choices().items() if pipeline.configured_name(name) != state.backbone
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Catalog search space",
            "opts": self.model._meta,
            "state": state,
            "pooling": pooling,
            "pooling_centre": pooling_centre,
            "configured_pooling": configured,
            "configured_centre": configured_centre,
            "pooling_differs": (pooling, pooling_centre) != (configured, configured_centre),
            "reduction": Reduction.objects.filter(backbone=state.backbone, is_active=True).first(),
            "available_backbones": [a for a in others if a.available],
            "unavailable_backbones": [a for a in others if not a.available],
            "refit": dict(zip(("count", "needed"), curation_selectors.pca_refit_readiness(), strict=True)),
            "keypoints_missing": curation_selectors.images_without_keypoints(),
            "jobs": curation_selectors.catalog_jobs(limit=20),
            "running": any(j.status in ("queued", "running") for j in curation_selectors.catalog_jobs(limit=20)),
        }
        return TemplateResponse(request, "admin/gallery/catalog.html", context)


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("name", "image_count")
    search_fields = ("name",)
    exclude = ("images",)

    @admin.display(description="images")
    def image_count(self, obj: Tag) -> int:
        return obj.images.count()


@admin.register(CatalogJob)
class CatalogJobAdmin(admin.ModelAdmin):
    list_display = ("__str__", "status", "progress", "message", "created_at", "finished_at")
    list_filter = ("kind", "status")
    readonly_fields = ("kind", "backbone", "status", "total", "done", "message", "started_at", "finished_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # started from the catalog page or manage.py reembed/refit

    @admin.display(description="progress")
    def progress(self, obj: CatalogJob) -> str:
        return format_html('<progress max="100" value="{}"></progress> {} / {}', obj.percent, obj.done, obj.total)


@admin.register(Embedding)
class EmbeddingAdmin(admin.ModelAdmin):
    list_display = ("image", "backbone", "dim", "created_at")
    list_filter = ("backbone",)
    raw_id_fields = ("image",)
    exclude = ("vector",)


@admin.register(Reduction)
class ReductionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "backbone", "dims", "whiten", "fitted_on", "variance_kept", "is_active", "activated_at")
    list_filter = ("backbone", "is_active")
    exclude = ("mean", "components", "explained_variance")

    @admin.display(description="variance kept", ordering="explained_variance_ratio")
    def variance_kept(self, obj: Reduction) -> str:
        return f"{100 * obj.explained_variance_ratio:.1f}%"
