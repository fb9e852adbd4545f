"""The form renderer: Django's, remembering the HTML of the widgets it has drawn.

Every search page draws the same dozen widgets (the metric's list, the filters' dates and
boxes) with the same values; through the template engine that is a tenth of a search's
CPU. A widget's HTML depends only on its `widget` context, so a context made of plain
values (strings, numbers, dates, lists and dicts of them) is a safe key; anything else
(an object whose rendering we cannot see into) is drawn afresh every time.
"""

from __future__ import annotations

import datetime
import threading
from collections import OrderedDict
from typing import Any

from django.forms.renderers import DjangoTemplates
from django.utils.functional import Promise
from django.utils.safestring import SafeData

# Widgets remembered per process, least recently used dropped first.
MEMO_SIZE = 512
# A widget whose context holds more text than this (a long submitted value, a list of many
# tags) is drawn afresh: a client must not fill the memory with what it sends.
MAX_KEY_CHARS = 4096

_SCALARS = (bool, int, float, type(None), datetime.date, datetime.time)


class _Unkeyable(Exception):
    pass


def _freeze(value: Any, budget: list[int]) -> Any:
    """A hashable key that differs whenever the rendered HTML could."""
    if isinstance(value, Promise):  # a lazy translation: what it reads as now
        value = str(value)
    if isinstance(value, str):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise _Unkeyable
        # Marked safe, a string is written as is; plain, it is escaped.
        return ("safe", str(value)) if isinstance(value, SafeData) else str(value)
    if isinstance(value, _SCALARS):
        return (type(value), value)  # True and 1 hash alike but render differently
    if isinstance(value, dict):
        return ("dict", tuple((_freeze(k, budget), _freeze(v, budget)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value), tuple(_freeze(v, budget) for v in value))
    raise _Unkeyable


class MemoWidgetRenderer(DjangoTemplates):
    def __init__(self) -> None:
        super().__init__()
        self._memo: OrderedDict[Any, str] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, template_name: str, context: dict[str, Any], request: Any = None) -> str:
        if request is not None or not template_name.startswith("django/forms/widgets/") or list(context) != ["widget"]:
            return super().render(template_name, context, request)
        try:
            key = (template_name, _freeze(context["widget"], [MAX_KEY_CHARS]))
        except _Unkeyable:
            return super().render(template_name, context, request)
        with self._lock:
            html = self._memo.get(key)
            if html is not None:
                self._memo.move_to_end(key)
                return html
        html = super().render(template_name, context, request)
        with self._lock:
            self._memo[key] = html
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return html
