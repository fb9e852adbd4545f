"""The form renderer draws a widget once per distinct plain context, and never serves one
widget's HTML for another."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django import forms
from django.forms.renderers import DjangoTemplates
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy

from gallery.web import renderers
from gallery.web.forms import FiltersForm, SearchForm
from gallery.web.renderers import MemoWidgetRenderer


class _Counting(MemoWidgetRenderer):
    drawn = 0  # the widgets really drawn (the memo's misses)


@pytest.fixture
def renderer(monkeypatch: pytest.MonkeyPatch) -> _Counting:
    r = _Counting()
    original = DjangoTemplates.render

    def counted(self: DjangoTemplates, template_name: str, context: dict[str, Any], request: Any = None) -> str:
        if template_name.startswith("django/forms/widgets/"):
            r.drawn += 1
        return original(self, template_name, context, request)

    monkeypatch.setattr(DjangoTemplates, "render", counted)
    return r


def _html(form: forms.Form, renderer: DjangoTemplates) -> list[str]:
    form.renderer = renderer
    return [str(bf) for bf in form]


def test_the_search_pages_widgets_are_drawn_once_and_read_the_same(renderer: _Counting) -> None:
    plain = DjangoTemplates()
    data = {"metric": "euclidean", "limit": "7", "box": "0.1,0.2,0.5,0.6"}
    filters = {"tags": ["spring show"], "date_from": "2026-01-02", "mine": "on"}
    expected = _html(SearchForm(data), plain) + _html(FiltersForm(filters, tags=["spring show", "wings"]), plain)
    first = _html(SearchForm(data), renderer) + _html(FiltersForm(filters, tags=["spring show", "wings"]), renderer)
    drawn = renderer.drawn
    again = _html(SearchForm(data), renderer) + _html(FiltersForm(filters, tags=["spring show", "wings"]), renderer)
    assert first == expected and again == expected
    assert drawn >= 8 and renderer.drawn == drawn  # the second page drew nothing


def test_another_value_is_another_widget(renderer: _Counting) -> None:
    a = _html(SearchForm({"metric": "cosine", "limit": "5", "box": ""}), renderer)
    b = _html(SearchForm({"metric": "euclidean", "limit": "6", "box": '<script>"x"</script>'}), renderer)
    assert a != b
    assert 'value="&lt;script&gt;&quot;x&quot;&lt;/script&gt;"' in b[3]  # escaped, as drawn afresh
    assert 'value="euclidean" selected' in b[1] and 'value="cosine" selected' in a[1]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (True, 1),  # equal and hashed alike, drawn differently
        ("<b>", mark_safe("<b>")),  # escaped, or written as is
        (datetime.date(2026, 1, 2), "2026-01-02"),
    ],
)
def test_values_that_compare_equal_but_draw_differently_are_kept_apart(one: object, other: object) -> None:
    budget = [renderers.MAX_KEY_CHARS]
    assert renderers._freeze({"value": one}, budget) != renderers._freeze({"value": other}, budget)


def test_unknown_objects_and_long_values_are_drawn_afresh_and_not_kept(renderer: _Counting) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    opaque = forms.TextInput(attrs={"data-x": Opaque()})  # kept as an object in the context
    for _ in range(2):
        assert 'data-x="opaque"' in opaque.render("q", "", renderer=renderer)
    assert renderer.drawn == 2
    widget = forms.TextInput()
    long = "x" * (renderers.MAX_KEY_CHARS + 1)
    for _ in range(2):
        assert long in widget.render("q", long, renderer=renderer)
    assert renderer.drawn == 4 and len(renderer._memo) == 0


def test_lazy_text_is_keyed_by_what_it_reads_now(renderer: _Counting) -> None:
    widget = forms.TextInput(attrs={"placeholder": gettext_lazy("any tag")})
    assert 'placeholder="any tag"' in widget.render("q", "", renderer=renderer)
    widget.render("q", "", renderer=renderer)
    assert renderer.drawn == 1


def test_the_memo_keeps_at_most_its_size(renderer: _Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(renderers, "MEMO_SIZE", 3)
    widget = forms.TextInput()
    for i in range(10):
        widget.render("q", str(i), renderer=renderer)
    assert len(renderer._memo) == 3
    widget.render("q", "9", renderer=renderer)  # the most recent are kept
    assert renderer.drawn == 10
