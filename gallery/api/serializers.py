"""The JSON API's shapes: what it accepts and what it answers, one class per shape."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from gallery.catalog import tagnames
from gallery.catalog.models import Image
from gallery.vision.index import METRICS


def _absolute(request: Any, path: str) -> str:
    return request.build_absolute_uri(path) if request is not None else path


class ImageSerializer(serializers.ModelSerializer):
    """A catalog image with the links a client follows next."""

    title = serializers.CharField(
        source="display_title",
        read_only=True,
        help_text="what the pages show: the title given at upload, or else the uploaded file's name",
    )
    given_title = serializers.CharField(
        source="title", read_only=True, help_text="the title given at upload; empty when none was given"
    )
    original_name = serializers.CharField(read_only=True, help_text="the uploaded file's name; empty for some imports")
    tags = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    page_url = serializers.SerializerMethodField()
    file_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()
    status_url = serializers.SerializerMethodField()
    similar_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id", "title", "given_title", "original_name", "status", "status_reason", "width", "height", "format", "size",
            "tags", "created_at", "url", "page_url", "file_url", "thumbnail_url", "status_url", "similar_url",
        ]  # fmt: skip
        read_only_fields = fields

    def _link(self, name: str, image: Image) -> str:
        return _absolute(self.context.get("request"), reverse(name, args=[image.pk]))

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_tags(self, image: Image) -> list[str]:
        return sorted(tagnames.names_of(image))

    @extend_schema_field(serializers.URLField())
    def get_url(self, image: Image) -> str:
        return self._link("api:image-detail", image)

    @extend_schema_field(serializers.URLField())
    def get_page_url(self, image: Image) -> str:
        return self._link("gallery:detail", image)

    @extend_schema_field(serializers.URLField())
    def get_file_url(self, image: Image) -> str:
        return _absolute(self.context.get("request"), image.display_url)

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_thumbnail_url(self, image: Image) -> str | None:
        return _absolute(self.context.get("request"), image.thumbnail_url) if image.thumbnail else None

    @extend_schema_field(serializers.URLField())
    def get_status_url(self, image: Image) -> str:
        return self._link("api:image-status", image)

    @extend_schema_field(serializers.URLField())
    def get_similar_url(self, image: Image) -> str:
        return self._link("api:image-similar", image)


class ImageStatusSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Image.Status.choices)
    reason = serializers.CharField(allow_blank=True, help_text="why analysis failed; empty otherwise")
    done = serializers.BooleanField(help_text="true once the status is ready or failed")


class ImageUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True, help_text="one photo: JPEG, PNG, GIF, WebP, BMP or TIFF")
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    def to_internal_value(self, data: Any) -> Any:
        if not (hasattr(data, "get") and data.get("file")):
            raise serializers.ValidationError(
                {"file": [serializers.ErrorDetail("Attach a photo as `file`.", code="missing_file")]}
            )
        return super().to_internal_value(data)


class MetricField(serializers.ChoiceField):
    """A metric name; an unknown one fails with the stable code `unknown_metric`."""

    def __init__(self, **kwargs: Any):
        super().__init__(choices=list(METRICS), **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if str(data) not in METRICS:
            raise serializers.ValidationError(
                f"Unknown metric “{data}”; choose one of {', '.join(METRICS)}.", code="unknown_metric"
            )
        return str(data)


class SearchOptionsSerializer(serializers.Serializer):
    """How to rank: shared by search by photo and "more like this"."""

    limit = serializers.IntegerField(min_value=1, max_value=100, required=False, help_text="how many results (default 20)")
    metric = MetricField(required=False, help_text="how to compare (default cosine)")
    tag = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default="", help_text="only images with this tag"
    )
    min_score = serializers.FloatField(
        required=False, allow_null=True, default=None, help_text="cosine and inner product: drop results scoring below this"
    )
    max_distance = serializers.FloatField(
        required=False, allow_null=True, default=None, min_value=0, help_text="euclidean: drop results farther than this"
    )

    tags = serializers.CharField(
        max_length=300, required=False, allow_blank=True, default="", help_text="only images with all these tags, comma-separated"
    )
    date_from = serializers.DateField(
        required=False, allow_null=True, default=None, help_text="uploaded on or after (YYYY-MM-DD)"
    )
    date_to = serializers.DateField(required=False, allow_null=True, default=None, help_text="uploaded on or before (YYYY-MM-DD)")
    mine = serializers.BooleanField(required=False, default=False, help_text="only images the signed-in user uploaded")
    one_per_group = serializers.BooleanField(
        required=False, default=False, help_text="at most one photo of each group of near-duplicates"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("date_from") and attrs.get("date_to") and attrs["date_from"] > attrs["date_to"]:
            raise serializers.ValidationError(
                {"date_to": [serializers.ErrorDetail("date_to is before date_from.", code="invalid_date")]}
            )
        names = [t.strip().lower() for t in attrs.get("tags", "").split(",") if t.strip()]
        if len(names) > 10:
            raise serializers.ValidationError({"tags": [serializers.ErrorDetail("At most 10 tags.", code="invalid")]})
        attrs["tags"] = list(dict.fromkeys(names))
        attrs.setdefault("metric", str(settings.IMAGESEARCH["DEFAULT_METRIC"]))
        attrs.setdefault("limit", int(settings.IMAGESEARCH["RESULTS"]))
        attrs["tag"] = attrs.get("tag", "").strip().lower()
        if attrs["metric"] == "euclidean" and attrs.get("min_score") is not None:
            raise serializers.ValidationError(
                {"min_score": [serializers.ErrorDetail("Euclidean results are distances: use max_distance.", code="invalid")]}
            )
        if attrs["metric"] != "euclidean" and attrs.get("max_distance") is not None:
            raise serializers.ValidationError(
                {"max_distance": [serializers.ErrorDetail("max_distance applies to the euclidean metric.", code="invalid")]}
            )
        return attrs


class SearchRequestSerializer(SearchOptionsSerializer):
    """Exactly one query: an uploaded photo, a catalog image id, a catalog image's URL, or words."""

    file = serializers.FileField(required=False, allow_empty_file=True, help_text="a query photo; it is not added to the catalog")
    image_id = serializers.IntegerField(required=False, min_value=1, help_text='a catalog image: "more like this"')
    image_url = serializers.CharField(
        required=False, max_length=2000, help_text="the page, API or file URL of a catalog image (never fetched)"
    )
    q = serializers.CharField(
        required=False, allow_blank=True, max_length=1000, help_text="words, such as bird, espresso, monarch butterfly"
    )
    box = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=200,
        help_text="search with a region of the photo or image only: left,top,right,bottom as fractions (0 to 1)",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [k for k in ("file", "image_id", "image_url", "q") if attrs.get(k) or (k == "q" and k in attrs)]
        if not given:
            raise serializers.ValidationError(
                {
                    "file": [
                        serializers.ErrorDetail(
                            "Attach a query photo as `file`, or give `image_id`, `image_url` or words as `q`.",
                            code="missing_file",
                        )
                    ]
                }
            )
        if len(given) > 1:
            raise serializers.ValidationError(
                {given[1]: [serializers.ErrorDetail("Give only one of file, image_id, image_url and q.", code="invalid")]}
            )
        if given == ["q"] and attrs.get("box"):
            raise serializers.ValidationError(
                {"box": [serializers.ErrorDetail("A box needs a photo or a catalog image, not words.", code="invalid")]}
            )
        return super().validate(attrs)


class WordsSearchSerializer(SearchOptionsSerializer):
    """Search by words (GET): `q` and the usual options and filters."""

    q = serializers.CharField(allow_blank=True, max_length=1000, help_text="words, such as bird, espresso, monarch butterfly")


class WordSuggestionsSerializer(serializers.Serializer):
    words = serializers.ListField(child=serializers.CharField(), help_text="words the search knows, best first")


class SearchQuerySerializer(serializers.Serializer):
    name = serializers.CharField(allow_blank=True, help_text="the uploaded file's name")
    image = ImageSerializer(allow_null=True, help_text="the catalog image, for more like this")
    box = serializers.CharField(required=False, help_text="the region searched, as fractions left,top,right,bottom")
    words = serializers.CharField(required=False, help_text="the words searched for")
    understood = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="the words the search knows, each searched with its narrower kinds",
    )
    ignored = serializers.ListField(child=serializers.CharField(), required=False, help_text="words it does not know")


class SearchHitSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    score = serializers.FloatField()
    image = ImageSerializer()


class SearchResultSerializer(serializers.Serializer):
    metric = serializers.ChoiceField(choices=list(METRICS))
    higher_is_better = serializers.BooleanField(help_text="false for euclidean, whose scores are distances")
    space = serializers.CharField(help_text="the backbone and PCA the scores were computed in")
    query = SearchQuerySerializer()
    count = serializers.IntegerField()
    results = SearchHitSerializer(many=True)


class ExistingImageSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.URLField()
    page_url = serializers.URLField()


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="stable, for programs: not_an_image, too_large, duplicate, unknown_metric ...")
    message = serializers.CharField(help_text="for people")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False, help_text="per-parameter problems"
    )
    existing = ExistingImageSerializer(required=False, help_text="for duplicate: the image already in the catalog")


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()
