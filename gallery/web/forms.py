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


class MetricForm(forms.Form):
    metric = forms.ChoiceField(choices=METRIC_CHOICES, required=False)
