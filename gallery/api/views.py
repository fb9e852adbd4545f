"""The JSON API, /api/v1/: thin endpoints over the same services and selectors as the pages.

Every failure answers `{"error": {"code": ..., "message": ...}}`; the codes are stable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, JsonResponse
from django.urls import Resolver404, resolve, reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from drf_spectacular.views import SpectacularRedocView
from rest_framework import exceptions, generics, permissions, serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from gallery import ratelimit
from gallery.api.serializers import (
    ErrorSerializer,
    ImageSerializer,
    ImageStatusSerializer,
    ImageUploadSerializer,
    SearchOptionsSerializer,
    SearchRequestSerializer,
    SearchResultSerializer,
    WordsSearchSerializer,
    WordSuggestionsSerializer,
)
from gallery.catalog import selectors as catalog_selectors
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.errors import DuplicateImage, ImageRejected, SearchRejected
from gallery.search import selectors as search_selectors
from gallery.search import words as search_words
from gallery.search.selectors import Box, SearchFilters, SearchHit

# ---------------------------------------------------------------- errors


class ApiError(exceptions.APIException):
    """A failure with a stable code and, optionally, more fields in the error body."""

    def __init__(self, *, status_code: int, code: str, message: str, **extra: Any):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.extra = extra


class TooManyRequests(ApiError):
    """429 with Retry-After (DRF's handler sets it from `wait`) and the limiter's stable code."""

    MESSAGES = {
        ratelimit.RATE_LIMITED: "Too many requests; try again in {wait} s.",
        ratelimit.TOO_MANY_IN_FLIGHT: "Too many requests of this client are still running; try again when one is done.",
        ratelimit.SIGN_IN_LOCKED: "Too many failed sign-ins; try again in {wait} s.",
    }

    def __init__(self, refusal: ratelimit.Limited):
        message = self.MESSAGES[refusal.code].format(wait=refusal.wait)
        super().__init__(status_code=429, code=refusal.code, message=message, retry_after=refusal.wait)
        self.wait = refusal.wait


class LimitedView(APIView):
    """An endpoint under the same limits as its page: `limits` maps a method to its scope
    (window and in-flight cap per client, counted after authentication so a token's user
    and the same user's browser share one budget)."""

    limits: dict[str, str] = {}
    _release: Callable[[], None]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        scope = self.limits.get(request.method or "")
        if scope:
            try:
                self._release = ratelimit.admit(request, scope=scope)  # type: ignore[arg-type]
            except ratelimit.Limited as refusal:
                raise TooManyRequests(refusal) from None

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        self._release = lambda: None
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            self._release()


def rejection_code(exc: ImageRejected) -> str:
    """A stable code for an upload the services refused; their messages are for people."""
    return exc.code


def rejection_error(exc: ImageRejected, request: HttpRequest) -> ApiError:
    code = rejection_code(exc)
    if isinstance(exc, DuplicateImage):
        existing = exc.existing
        # Which image it duplicates is said only to those who may open that image.
        if not catalog_selectors.image_visible_to(user=request.user, image_id=existing.pk):
            return ApiError(status_code=status.HTTP_409_CONFLICT, code=code, message=exc.message_for(may_see=False))
        return ApiError(
            status_code=status.HTTP_409_CONFLICT,
            code=code,
            message=exc.message_for(may_see=True),
            existing={
                "id": existing.pk,
                "url": request.build_absolute_uri(reverse("api:image-detail", args=[existing.pk])),
                "page_url": request.build_absolute_uri(reverse("gallery:detail", args=[existing.pk])),
            },
        )
    statuses = {"too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "server_busy": status.HTTP_503_SERVICE_UNAVAILABLE}
    return ApiError(
        status_code=statuses.get(code, status.HTTP_400_BAD_REQUEST),
        code=code,
        message=str(exc),
    )


_VALIDATION_CODES = {"missing_file", "unknown_metric", "invalid_date"}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with every error body reshaped into the API's one error format."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        codes = _codes(exc.detail)
        code = next((c for c in codes if c in _VALIDATION_CODES), "invalid_parameter")
        if codes == ["authorization"]:
            code = "invalid_credentials"
        first = next(iter(fields.items()), ("", [""]))
        message = first[1][0] if first[0] in ("", "non_field_errors") else f"{first[0]}: {first[1][0]}"
        body: dict[str, Any] = {"code": code, "message": message, "fields": fields}
    else:
        detail = getattr(exc, "detail", "")
        code = str(getattr(detail, "code", None) or getattr(exc, "default_code", "error"))
        body = {"code": code, "message": str(detail), **getattr(exc, "extra", {})}
    response.data = {"error": body}
    return response


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
        return out
    if isinstance(detail, list):
        if all(not isinstance(v, dict | list) for v in detail):
            return {prefix or "non_field_errors": [str(v) for v in detail]}
        out = {}
        for i, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


def _codes(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [c for v in detail.values() for c in _codes(v)]
    if isinstance(detail, list):
        return [c for v in detail for c in _codes(v)]
    return [str(getattr(detail, "code", "invalid"))]


def api_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Unknown paths under /api/v1/ answer in the API's error format, not an HTML page."""
    return JsonResponse({"error": {"code": "not_found", "message": "No such API endpoint."}}, status=404)


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="invalid parameters or photo"),
    401: OpenApiResponse(ErrorSerializer, description="not authenticated"),
    403: OpenApiResponse(ErrorSerializer, description="not allowed"),
    404: OpenApiResponse(ErrorSerializer, description="no such image"),
    405: OpenApiResponse(ErrorSerializer, description="method not allowed"),
    406: OpenApiResponse(ErrorSerializer, description="not acceptable"),
    409: OpenApiResponse(ErrorSerializer, description="duplicate photo, or image not analysed yet"),
    413: OpenApiResponse(ErrorSerializer, description="file too large"),
    415: OpenApiResponse(ErrorSerializer, description="unsupported media type"),
    429: OpenApiResponse(
        ErrorSerializer,
        description="too many requests (`rate_limited`), too many still running (`too_many_in_flight`) or "
        "too many failed sign-ins (`sign_in_locked`): retry after the Retry-After header's seconds",
    ),
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {c: ERRORS[c] for c in codes}


# ---------------------------------------------------------------- catalog


def _visible_image(request: Request, pk: int) -> Image:
    image = catalog_selectors.images_visible_to(user=request.user).filter(pk=pk).first()
    if image is None:
        raise exceptions.NotFound(f"No image {pk}.")
    return image


class ImagePagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Request) -> int:
        self.page_size = int(settings.IMAGESEARCH["GALLERY_PAGE_SIZE"])
        return super().get_page_size(request) or self.page_size


class ImageListView(LimitedView, generics.ListAPIView):
    """Published catalog images, newest first; `tag` filters. POST uploads a photo."""

    limits = {"POST": "upload"}
    serializer_class = ImageSerializer
    pagination_class = ImagePagination

    def get_permissions(self) -> list[permissions.BasePermission]:
        if self.request.method == "POST":
            return [permissions.IsAuthenticated()]
        return [permissions.AllowAny()]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return catalog_selectors.gallery_images(tag=self.request.query_params.get("tag", "").strip().lower())

    @extend_schema(
        summary="List catalog images",
        parameters=[OpenApiParameter("tag", str, description="only images with this tag")],
        responses={200: ImageSerializer(many=True), **_errors(404)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Upload a photo",
        description="Adds one photo to the catalog. It is analysed in the background: follow `status_url` "
        "until the status is ready (searchable) or failed. Needs a token (`Authorization: Token ...`) or a session.",
        request={"multipart/form-data": ImageUploadSerializer},
        responses={202: ImageSerializer, **_errors(400, 401, 403, 409, 413, 415, 429)},
    )
    def post(self, request: Request) -> Response:
        form = ImageUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        try:
            image = catalog_services.image_create(
                file=upload, uploaded_by=request.user, title=form.validated_data["title"], original_name=upload.name
            )
        except ImageRejected as exc:
            raise rejection_error(exc, request) from None
        body = ImageSerializer(image, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["status_url"]})


class ImageDetailView(APIView):
    serializer_class = ImageSerializer

    @extend_schema(summary="One catalog image", responses={200: ImageSerializer, **_errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        return Response(ImageSerializer(_visible_image(request, pk), context={"request": request}).data)


class ImageStatusView(APIView):
    serializer_class = ImageStatusSerializer

    @extend_schema(summary="Analysis status of an image", responses={200: ImageStatusSerializer, **_errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        image = _visible_image(request, pk)
        done = image.status in (Image.Status.READY, Image.Status.FAILED)
        return Response({"id": image.pk, "status": image.status, "reason": image.status_reason, "done": done})


# ---------------------------------------------------------------- search


def _catalog_image_from_url(url: str) -> int:
    """The catalog image a page, API or media URL of this site names; nothing is fetched."""
    path = urlsplit(url).path
    media = str(settings.MEDIA_URL)
    if path.startswith(media):
        name = path[len(media) :]
        pk = Image.objects.filter(Q(display=name) | Q(thumbnail=name)).values_list("pk", flat=True).first()
        if pk is not None:
            return int(pk)
    else:
        try:
            match = resolve(path)
        except Resolver404:
            match = None
        if match is not None and match.view_name in ("gallery:detail", "api:image-detail") and "pk" in match.kwargs:
            return int(match.kwargs["pk"])
    raise ApiError(
        status_code=status.HTTP_400_BAD_REQUEST,
        code="unknown_image_url",
        message="image_url must be the page, API or file URL of an image in this catalog.",
    )


def _hits_within(hits: list[SearchHit], options: dict[str, Any]) -> list[SearchHit]:
    if options.get("min_score") is not None:
        return [h for h in hits if h.score >= options["min_score"]]
    if options.get("max_distance") is not None:
        return [h for h in hits if h.score <= options["max_distance"]]
    return hits


def search_error(exc: SearchRejected) -> ApiError:
    return ApiError(status_code=status.HTTP_400_BAD_REQUEST, code=exc.code, message=str(exc), **exc.fields)


def _filters(request: Request, options: dict[str, Any]) -> SearchFilters:
    """The filters of a search request; "mine" needs a signed-in user."""
    mine = None
    if options.get("mine"):
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated("Sign in (or send a token) to search only your own uploads.")
        mine = request.user.pk
    tags = tuple(options.get("tags") or ())
    if options.get("tag"):
        tags = (*tags, options["tag"])
    return SearchFilters(
        tags=tuple(dict.fromkeys(tags)),
        date_from=options.get("date_from"),
        date_to=options.get("date_to"),
        uploaded_by=mine,
        one_per_group=bool(options.get("one_per_group")),
    )


def _box(options: dict[str, Any]) -> Box | None:
    try:
        return Box.parse(options["box"]) if options.get("box") else None
    except SearchRejected as exc:
        raise search_error(exc) from None


def _similar(request: Request, image: Image, options: dict[str, Any]) -> list[SearchHit]:
    if image.status != Image.Status.READY:
        raise ApiError(
            status_code=status.HTTP_409_CONFLICT,
            code="image_not_ready",
            message=f"Image {image.pk} is {image.status}; similar images are available once it is ready.",
        )
    filters = _filters(request, options)
    box = _box(options)
    if box is not None:
        try:
            picture = search_selectors.image_picture(image=image)
            return search_selectors.search_by_region(
                picture=picture, box=box, limit=options["limit"], metric=options["metric"], filters=filters
            )
        except SearchRejected as exc:
            raise search_error(exc) from None
    return search_selectors.similar_to_image(image=image, limit=options["limit"], metric=options["metric"], filters=filters)


def _words(request: Request, options: dict[str, Any]) -> Response:
    try:
        found = search_words.search_by_words(text=options["q"], limit=options["limit"], filters=_filters(request, options))
    except SearchRejected as exc:
        raise search_error(exc) from None
    words = {"words": options["q"], "understood": found.understood, "ignored": list(found.query.unknown)}
    return _results(request, found.hits, {**options, "metric": "cosine"}, extra=words)


def _results(
    request: Request,
    hits: list[SearchHit],
    options: dict[str, Any],
    *,
    name: str = "",
    image: Image | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    context = {"request": request}
    hits = _hits_within(hits, options)
    query = {"name": name, "image": ImageSerializer(image, context=context).data if image is not None else None}
    if options.get("box"):
        query["box"] = str(Box.parse(options["box"]))
    return Response(
        {
            "metric": options["metric"],
            "higher_is_better": options["metric"] != "euclidean",
            "space": search_selectors.active_space().label,
            "query": {**query, **(extra or {})},
            "count": len(hits),
            "results": [
                {"rank": h.rank, "score": h.score, "image": ImageSerializer(h.image, context=context).data} for h in hits
            ],
        }
    )


class SearchView(LimitedView):
    serializer_class = SearchResultSerializer
    limits = {"POST": "search", "GET": "search"}

    @extend_schema(
        summary="Search by words",
        description="Catalog images for words such as `bird`, `espresso` or `monarch butterfly`: the names of the "
        "1,000 ImageNet classes and broader words for them (`dog` finds every breed). Ranked by the images' labels "
        "and their likeness to the best labelled hits. Unknown words answer `unknown_words` with suggestions.",
        parameters=[WordsSearchSerializer],
        responses={200: SearchResultSerializer, **_errors(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        form = WordsSearchSerializer(data=request.query_params)
        form.is_valid(raise_exception=True)
        return _words(request, form.validated_data)

    @extend_schema(
        summary="Search by photo, by a region of it, by catalog image or by words",
        description="Give exactly one query: `file` (a photo, embedded for this search and never stored), `image_id` "
        'or `image_url` (a catalog image: "more like this"), or `q` (words). With a photo or catalog image, `box` '
        "searches with that region only. Filters: `tags`, `date_from`, `date_to`, `mine`, `one_per_group`. Cosine "
        "and inner product rank by similarity (higher is closer), euclidean by distance (lower is closer).",
        request={"multipart/form-data": SearchRequestSerializer, "application/json": SearchRequestSerializer},
        responses={200: SearchResultSerializer, **_errors(400, 401, 404, 409, 413, 415, 429)},
    )
    def post(self, request: Request) -> Response:
        form = SearchRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        options = form.validated_data
        if "q" in options:
            return _words(request, options)
        upload = options.get("file")
        if upload is not None:
            filters, box = _filters(request, options), _box(options)
            try:
                picture = search_selectors.query_decode(file=upload, box=box)
                if box is not None:
                    hits = search_selectors.search_by_region(
                        picture=picture, box=box, limit=options["limit"], metric=options["metric"], filters=filters
                    )
                else:
                    hits = search_selectors.search_by_picture(
                        picture=picture, limit=options["limit"], metric=options["metric"], filters=filters
                    )
            except ImageRejected as exc:
                raise rejection_error(exc, request) from None
            except SearchRejected as exc:
                raise search_error(exc) from None
            return _results(request, hits, options, name=upload.name)
        pk = options.get("image_id") or _catalog_image_from_url(options["image_url"])
        image = _visible_image(request, pk)
        return _results(request, _similar(request, image, options), options, image=image)


class SimilarView(APIView):
    serializer_class = SearchResultSerializer

    @extend_schema(
        summary="More like this",
        description="The catalog images most similar to this one (itself excluded).",
        parameters=[SearchOptionsSerializer],
        responses={200: SearchResultSerializer, **_errors(400, 404, 409)},
    )
    def get(self, request: Request, pk: int) -> Response:
        form = SearchOptionsSerializer(data=request.query_params)
        form.is_valid(raise_exception=True)
        image = _visible_image(request, pk)
        return _results(request, _similar(request, image, form.validated_data), form.validated_data, image=image)


class WordSuggestionsView(LimitedView):
    serializer_class = WordSuggestionsSerializer
    limits = {"GET": "suggest"}

    @extend_schema(
        summary="Words the search knows",
        description="Up to `limit` (default 8, at most 20) words starting like `prefix`, for suggestions as one types.",
        parameters=[
            OpenApiParameter("prefix", str, description="what has been typed so far (at most 100 characters)"),
            OpenApiParameter("limit", int, description="how many words (1 to 20)"),
        ],
        responses={200: WordSuggestionsSerializer, **_errors(400, 429)},
    )
    def get(self, request: Request) -> Response:
        prefix = request.query_params.get("prefix", "")
        raw_limit = request.query_params.get("limit", "8")
        if len(prefix) > 100 or not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= 20):
            raise ApiError(
                status_code=status.HTTP_400_BAD_REQUEST,
                code="invalid_parameter",
                message="prefix is at most 100 characters and limit a number from 1 to 20.",
            )
        return Response({"words": search_words.words_suggest(prefix=prefix, limit=int(raw_limit))})


@extend_schema(
    summary="Get an API token",
    description="Exchange a username and password for the token that uploads send as `Authorization: Token ...`.",
    responses={200: inline_serializer("Token", {"token": serializers.CharField()}), **_errors(400, 415, 429)},
)
class TokenView(ObtainAuthToken):
    """Under the same per-account and per-address sign-in back-off as the sign-in pages."""

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        username = str(request.data.get("username", "")) if isinstance(request.data, dict) else ""
        try:
            ratelimit.sign_in_check(request, username=username)  # type: ignore[arg-type]
        except ratelimit.Limited as refusal:
            raise TooManyRequests(refusal) from None
        response = super().post(request, *args, **kwargs)
        ratelimit.sign_in_succeeded(username=username)
        return response


class OfflineRedocView(SpectacularRedocView):
    """ReDoc confined to the product's own origin: the product works offline, yet the ReDoc
    bundle shows a logo from a CDN. The policy blocks it, and ReDoc then leaves the logo out."""

    POLICY = (
        "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
    )

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().get(request, *args, **kwargs)
        response["Content-Security-Policy"] = self.POLICY
        return response
