"""Forms of the copyright-monitoring pages."""

from __future__ import annotations

from django import forms

from gallery.copyright.models import CopyMatch, MatchDecision
from gallery.web.forms import ACCEPT


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
    """The reviewer's decision. The action comes from the button clicked; `seen_status`
    is the match's status when the page was rendered, so a decision taken meanwhile by
    someone else is not silently overwritten."""

    action = forms.ChoiceField(choices=MatchDecision.Action.choices)
    seen_status = forms.ChoiceField(choices=CopyMatch.Status.choices, widget=forms.HiddenInput, required=False)
    hide_upload = forms.BooleanField(required=False, label="Hide the upload from the public gallery")
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=5000, label="Why")


class _MatchIds(forms.Field):
    """Ticked match ids (at most one page's worth); unknown or decided ones are skipped later."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value: object) -> list[int]:
        values = value if isinstance(value, list) else []
        ids = [int(v) for v in values if str(v).isdigit()]
        if not ids:
            raise forms.ValidationError("Tick the matches to dismiss first.", code="required")
        return ids[:500]


class BulkDismissForm(forms.Form):
    matches = _MatchIds()
    note = forms.CharField(max_length=5000, required=False, label="Why (recorded on each)")
