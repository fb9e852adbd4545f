from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from gallery.vision.index import METRICS

METRIC_CHOICES = [("cosine", "Cosine similarity"), ("euclidean", "Euclidean distance"), ("inner_product", "Inner product")]
assert {m for m, _ in METRIC_CHOICES} == set(METRICS)

ACCEPT = "image/jpeg,image/png,image/gif,image/webp,image/bmp,image/tiff"


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    widget = MultipleFileInput

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        files = data if isinstance(data, list | tuple) else [data]
        files = [f for f in files if f]
        if not files:
            raise forms.ValidationError("Choose at least one photo.")
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        if len(files) > limit:
            raise forms.ValidationError(f"Upload at most {limit} photos at once.")
        return files


class UploadForm(forms.Form):
    files = MultipleFileField(label="Photos", widget=MultipleFileInput(attrs={"accept": ACCEPT, "multiple": True}))
    title = forms.CharField(max_length=200, required=False, help_text="Optional; applies to every photo in this upload.")


class SearchForm(forms.Form):
    file = forms.FileField(label="Query photo", widget=forms.ClearableFileInput(attrs={"accept": ACCEPT}))
    metric = forms.ChoiceField(choices=METRIC_CHOICES, initial="cosine")
    limit = forms.IntegerField(min_value=1, max_value=100, initial=20)
    box = forms.CharField(
        required=False,
        max_length=200,
        label="Region",
        help_text="Optional: drag on your photo to search with a part of it only.",
        widget=forms.TextInput(attrs={"placeholder": "whole photo", "data-region-box": "", "autocomplete": "off"}),
    )


class MetricForm(forms.Form):
    metric = forms.ChoiceField(choices=METRIC_CHOICES, required=False)


class FiltersForm(forms.Form):
    """The filters every search page offers; `tags` are those in use."""

    tags = forms.MultipleChoiceField(required=False, label="Tagged (all of)", widget=forms.SelectMultiple(attrs={"size": 4}))
    date_from = forms.DateField(required=False, label="Uploaded from", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="to", widget=forms.DateInput(attrs={"type": "date"}))
    mine = forms.BooleanField(required=False, label="Only my uploads")
    one_per_group = forms.BooleanField(required=False, label="One photo per group of near-duplicates")

    def __init__(self, *args: Any, tags: list[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["tags"].choices = [(t, t) for t in tags or []]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_to", "The end date is before the start date.")
        return data


class WordsForm(forms.Form):
    q = forms.CharField(
        label="Words",
        max_length=200,
        required=False,
        widget=forms.TextInput(
            attrs={
                "placeholder": "bird, espresso, airliner…",
                "autocomplete": "off",
                "list": "word-suggestions",
                "data-suggest": "",
            }
        ),
    )
    limit = forms.IntegerField(min_value=1, max_value=100, initial=20, required=False, label="Results")
