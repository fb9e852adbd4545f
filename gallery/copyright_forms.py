"""Forms of the copyright-monitoring pages."""

from __future__ import annotations

from django import forms

from .forms import ACCEPT
from .models import CopyMatch, MatchDecision


class WorkForm(forms.Form):
    file = forms.FileField(label="Protected image", widget=forms.ClearableFileInput(attrs={"accept": ACCEPT}))
    title = forms.CharField(max_length=200)
    rights_holder = forms.CharField(max_length=200)
    reference = forms.CharField(max_length=200, required=False, help_text="Licence, catalogue number or URL.")
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


class QueueFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "Any status"), *CopyMatch.Status.choices], required=False)
    rights_holder = forms.CharField(max_length=200, required=False)
    order = forms.ChoiceField(choices=[("newest", "Newest first"), ("score", "Highest score first")], required=False)


class DecisionForm(forms.Form):
    action = forms.ChoiceField(choices=MatchDecision.Action.choices)
    hide_upload = forms.BooleanField(required=False, label="Hide the upload from the public gallery")
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=5000, label="Why")
