"""Thin views: parse input, call one service or selector, render."""

from __future__ import annotations

import base64
import io

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.uploadedfile import UploadedFile
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_http_methods, require_safe
from PIL import Image as PILImage

from gallery.access import upload_permission_required
from gallery.api.views import rejection_code
from gallery.catalog import selectors as catalog_selectors
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.errors import CatalogUnavailable, DuplicateImage, ImageRejected, SearchRejected
from gallery.ratelimit import rate_limited
from gallery.search import selectors as search_selectors
from gallery.search import words as words_selectors
from gallery.search.selectors import Box, SearchFilters
from gallery.vision.preprocess import jpeg_as_shown
from gallery.web.forms import FiltersForm, MetricForm, SearchForm, UploadForm, WordsForm

MAX_ROW_ID = 2**63 - 1


def _parse_ids(raw: str) -> list[int]:
    """Up to 200 ids from "1,2,3"; anything that is not a database id is ignored."""
    parts = (p.strip() for p in raw[:4000].split(","))
    ids = (int(p) for p in parts if p.isascii() and p.isdigit() and len(p) <= 19)
    return [i for i in ids if 0 < i <= MAX_ROW_ID][:200]


@require_safe
def gallery_index(request: HttpRequest) -> HttpResponse:
    tag = request.GET.get("tag", "").strip().lower()
    paginator = Paginator(catalog_selectors.gallery_images(tag=tag), settings.IMAGESEARCH["GALLERY_PAGE_SIZE"])
    page = paginator.get_page(request.GET.get("page"))
    empty = "" if page.object_list else catalog_selectors.empty_reason(tag=tag)
    return render(
        request, "gallery/index.html", {"page": page, "tag": tag, "tags": catalog_selectors.tags_in_use(), "empty": empty}
    )


@require_safe
@login_required
def my_uploads(request: HttpRequest) -> HttpResponse:
    """Every photo the signed-in user uploaded, with its analysis status and visibility."""
    paginator = Paginator(catalog_selectors.uploads_of(user=request.user), settings.IMAGESEARCH["GALLERY_PAGE_SIZE"])
    page = paginator.get_page(request.GET.get("page"))
    return render(request, "gallery/my_uploads.html", {"page": page})


@require_http_methods(["GET", "HEAD", "POST"])
@upload_permission_required
@rate_limited("upload")
def image_upload(request: HttpRequest) -> HttpResponse:
    if request.method in ("GET", "HEAD"):
        return render(request, "gallery/upload.html", {"form": UploadForm()})
    form = UploadForm(request.POST, request.FILES)
    wants_json = request.headers.get("Accept", "").startswith("application/json")
    if not form.is_valid():
        if wants_json:
            errors = [{"name": "", "code": "invalid_parameter", "message": str(e)} for es in form.errors.values() for e in es]
            return JsonResponse({"images": [], "errors": errors}, status=400)
        return render(request, "gallery/upload.html", {"form": form}, status=400)
    created: list[Image] = []
    problems: list[dict[str, object]] = []
    for f in form.cleaned_data["files"]:
        try:
            created.append(
                catalog_services.image_create(
                    file=f, uploaded_by=request.user, title=form.cleaned_data["title"], original_name=f.name
                )
            )
        except DuplicateImage as exc:
            # Which image it duplicates is said only to those who may open that image.
            may_see = catalog_selectors.image_visible_to(user=request.user, image_id=exc.existing.pk)
            problems.append(
                {
                    "name": f.name,
                    "message": exc.message_for(may_see=may_see),
                    "existing": exc.existing if may_see else None,
                    "code": rejection_code(exc),
                }
            )
        except ImageRejected as exc:
            problems.append({"name": f.name, "message": str(exc), "code": rejection_code(exc)})
        except CatalogUnavailable as exc:
            problems.append({"name": f.name, "message": str(exc), "unavailable": True, "code": "unavailable"})
    if wants_json:
        return _upload_json(created, problems)
    if not created:
        unavailable = any(p.get("unavailable") for p in problems)
        return render(
            request, "gallery/upload.html", {"form": UploadForm(), "problems": problems}, status=503 if unavailable else 400
        )
    if problems:
        request.session["upload_problems"] = [
            {"name": p["name"], "message": p["message"], "existing_id": getattr(p.get("existing"), "pk", None)} for p in problems
        ]
    return redirect(f"{reverse('gallery:upload_status')}?ids={','.join(str(im.pk) for im in created)}")


def _upload_json(created: list[Image], problems: list[dict[str, object]]) -> JsonResponse:
    """The page's script uploads file by file and shows each file's outcome in place."""
    images = [
        {
            "id": im.pk,
            "name": im.original_name,
            "title": im.display_title,
            "status": im.status,
            "status_label": im.get_status_display(),
            "page_url": reverse("gallery:detail", args=[im.pk]),
            "thumbnail_url": im.thumbnail_url,
        }
        for im in created
    ]
    errors = [
        {
            "name": p["name"],
            "code": p["code"],
            "message": p["message"],
            **({"existing_url": reverse("gallery:detail", args=[p["existing"].pk])} if p.get("existing") else {}),  # type: ignore[attr-defined]
        }
        for p in problems
    ]
    unavailable = any(p.get("unavailable") for p in problems)
    return JsonResponse({"images": images, "errors": errors}, status=201 if images else 503 if unavailable else 400)


@require_safe
@upload_permission_required
def upload_status(request: HttpRequest) -> HttpResponse:
    ids = _parse_ids(request.GET.get("ids", ""))
    images = list(catalog_selectors.images_visible_to(user=request.user).filter(pk__in=ids).order_by("pk"))
    problems = request.session.pop("upload_problems", [])
    waiting = any(im.status in (Image.Status.PENDING, Image.Status.PROCESSING) for im in images)
    return render(
        request,
        "gallery/upload_status.html",
        {"images": images, "problems": problems, "waiting": waiting, "ids": ",".join(map(str, ids))},
    )


@require_safe
def image_status_json(request: HttpRequest) -> JsonResponse:
    ids = _parse_ids(request.GET.get("ids", ""))
    return JsonResponse({"images": catalog_selectors.image_statuses(ids=ids, user=request.user)})


@require_safe
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # A hidden image opens for its uploader (with a notice) and staff; anyone else gets
    # the same 404 as for an image that never existed.
    image = get_object_or_404(catalog_selectors.images_visible_to(user=request.user), pk=pk)
    form = MetricForm(request.GET or None)
    metric = (form.cleaned_data.get("metric") if form.is_valid() else "") or search_selectors.default_metric()
    tag = request.GET.get("tag", "").strip().lower()
    similar = search_selectors.similar_to_image(image=image, metric=metric, tag=tag) if image.status == Image.Status.READY else []
    empty = "" if similar else catalog_selectors.empty_reason(tag=tag, searchable=True, exclude=image.pk)
    return render(
        request,
        "gallery/detail.html",
        {
            "image": image,
            "similar": similar,
            "metric": metric,
            "tag": tag,
            "tags": catalog_selectors.tags_in_use(),
            "form": MetricForm(initial={"metric": metric}),
            "empty": empty,
            "labels": words_selectors.image_labels(image=image) if image.status == Image.Status.READY else [],
        },
    )


PREVIEW_SIZE = search_selectors.QUERY_PREVIEW_SIDE  # the query photo's preview, longest side in pixels
# A web-sized JPEG up to this size is shown as it was sent (its metadata left out), not
# re-encoded: a search costs ~1 ms less CPU and the preview loses nothing to a second encode.
PREVIEW_AS_SENT_BYTES = 256 * 1024


def _inline_preview(picture: PILImage.Image, *, sent: UploadedFile | None = None) -> SafeString:
    """A small data-URL preview of the query photo, which is never stored. `sent`: the
    file the picture was decoded from, whole (no region cut from it)."""
    if sent is not None and max(picture.size) <= PREVIEW_SIZE and (sent.size or 0) <= PREVIEW_AS_SENT_BYTES:
        sent.seek(0)
        as_sent = jpeg_as_shown(sent.read(PREVIEW_AS_SENT_BYTES + 1), size=picture.size)
        if as_sent is not None:
            return _data_url(as_sent)
    preview = picture
    if max(picture.size) > PREVIEW_SIZE:
        preview = picture.copy()
        preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    out = io.BytesIO()
    preview.save(out, format="JPEG", quality=80)
    return _data_url(out.getvalue())


def _data_url(jpeg: bytes) -> SafeString:
    # Base64 holds no character HTML would escape: marked safe, the page does not scan it.
    return mark_safe("data:image/jpeg;base64," + base64.b64encode(jpeg).decode())


def _filters(request: HttpRequest, data: object, *, tags: list[str] | None = None) -> tuple[FiltersForm, SearchFilters | None]:
    """The page's filters form and, when valid, the filters it asks for ("mine" needs a
    signed-in user); `tags` are the tags in use when the caller has read them already."""
    form = FiltersForm(data or None, tags=catalog_selectors.tags_in_use() if tags is None else tags)
    if data and not form.is_valid():
        return form, None
    cleaned = form.cleaned_data if data else {}
    mine = None
    if cleaned.get("mine"):
        if not request.user.is_authenticated:
            form.add_error("mine", "Sign in to search only your own uploads.")
            return form, None
        mine = request.user.pk
    filters = SearchFilters(
        tags=tuple(cleaned.get("tags") or ()),
        date_from=cleaned.get("date_from"),
        date_to=cleaned.get("date_to"),
        uploaded_by=mine,
        one_per_group=bool(cleaned.get("one_per_group")),
    )
    return form, filters


@require_http_methods(["GET", "HEAD", "POST"])
@rate_limited("search")
def search(request: HttpRequest) -> HttpResponse:
    tags = catalog_selectors.tags_in_use()  # read once: the tag list and the filters' choices
    if request.method in ("GET", "HEAD"):
        form = SearchForm(initial={"metric": search_selectors.default_metric()})
        return render(request, "gallery/search.html", {"form": form, "tags": tags, "filters": FiltersForm(tags=tags)})
    form = SearchForm(request.POST, request.FILES)
    filters_form, filters = _filters(request, request.POST, tags=tags)
    context = {"form": form, "filters": filters_form, "tags": tags}
    if not form.is_valid() or filters is None:
        return render(request, "gallery/search.html", context, status=400)
    upload = form.cleaned_data["file"]
    metric = form.cleaned_data["metric"]
    try:
        box = Box.parse(form.cleaned_data["box"]) if form.cleaned_data["box"] else None
        picture = search_selectors.query_decode(file=upload, box=box)
        query = box.crop(picture) if box is not None else picture
    except SearchRejected as exc:
        form.add_error("box", str(exc))
        return render(request, "gallery/search.html", context, status=400)
    except ImageRejected as exc:
        form.add_error("file", str(exc))
        return render(request, "gallery/search.html", context, status=400)
    tag = request.POST.get("tag", "").strip().lower()
    space = search_selectors.active_space()  # read once: searched and named on the page
    hits = search_selectors.search_by_picture(
        picture=query, limit=form.cleaned_data["limit"], metric=metric, tag=tag, filters=filters, space=space
    )
    return render(
        request,
        "gallery/search.html",
        {
            **context,
            "hits": hits,
            "searched": True,
            "metric": metric,
            "query_name": upload.name,
            "query_preview": _inline_preview(query, sent=upload if box is None else None),
            "region": box is not None,
            "space": space.label,
            "tag": tag,
            "empty": "" if hits else catalog_selectors.empty_reason(tag=tag, searchable=True),
        },
    )


@require_safe
@rate_limited("search", methods=("GET",))
def search_words(request: HttpRequest) -> HttpResponse:
    """Search by words: ?q=bird, with the filters; suggestions come from the API as one types."""
    searched = "q" in request.GET
    form = WordsForm(request.GET if searched else None)
    filters_form, filters = _filters(request, request.GET if searched else None)
    context: dict[str, object] = {"form": form, "filters": filters_form, "searched": searched}
    if not searched:
        return render(request, "gallery/search_words.html", context)
    if not form.is_valid() or filters is None:
        return render(request, "gallery/search_words.html", context, status=400)
    try:
        found = words_selectors.search_by_words(
            text=form.cleaned_data["q"], limit=form.cleaned_data["limit"] or 20, filters=filters
        )
    except SearchRejected as exc:
        context.update(problem=str(exc), suggestions=exc.fields.get("suggestions", []))
        return render(request, "gallery/search_words.html", context, status=400)
    context.update(
        hits=found.hits, understood=found.understood, ignored=found.query.unknown, space=search_selectors.active_space().label
    )
    return render(request, "gallery/search_words.html", context)


@require_safe
@rate_limited("search", methods=("GET",))
def search_region(request: HttpRequest, pk: int) -> HttpResponse:
    """Search with a region of a catalog image (?box=left,top,right,bottom as fractions)."""
    image = get_object_or_404(catalog_selectors.images_visible_to(user=request.user), pk=pk)
    if image.status != Image.Status.READY:
        raise Http404
    narrowed = bool(set(request.GET) - {"box"})
    filters_form, filters = _filters(request, request.GET if narrowed else None)
    context: dict[str, object] = {"image": image, "filters": filters_form, "box": request.GET.get("box", "")[:200]}
    if filters is None:
        return render(request, "gallery/search_region.html", context, status=400)
    try:
        box = Box.parse(request.GET.get("box", ""))
        region = box.crop(search_selectors.image_picture(image=image))
    except SearchRejected as exc:
        context["problem"] = str(exc)
        return render(request, "gallery/search_region.html", context, status=400)
    space = search_selectors.active_space()
    hits = search_selectors.search_by_picture(
        picture=region, limit=20, metric=search_selectors.default_metric(), filters=filters, space=space
    )
    context.update(hits=hits, box=str(box), query_preview=_inline_preview(region), space=space.label)
    return render(request, "gallery/search_region.html", context)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A malformed or oversized request (too many files or fields): say so, store nothing."""
    return render(request, "400.html", {"max_files": settings.DATA_UPLOAD_MAX_NUMBER_FILES}, status=400)


@require_safe
def image_picture(request: HttpRequest, pk: int, kind: str) -> HttpResponse:
    """A hidden image's display copy or thumbnail, for those who may still see it (its
    uploader, staff who may view images, copyright reviewers of a matched upload);
    everyone else gets the same 404 as for an image that never existed."""
    image = get_object_or_404(Image, pk=pk)
    if kind not in ("display", "thumbnail") or not catalog_selectors.image_picture_visible(user=request.user, image=image):
        raise Http404
    stream = catalog_selectors.image_picture_open(image=image, kind=kind)
    if stream is None:
        raise Http404
    response = FileResponse(stream, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=300"
    return response
