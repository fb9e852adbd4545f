"""The staff operations page: thin, one selector. It answers within the broker timeout
even when the broker is gone (the checks say "broker unreachable")."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from gallery.access import staff_required
from gallery.operations import selectors


@staff_required
@require_safe
@never_cache
def operations_page(request: HttpRequest) -> HttpResponse:
    return render(request, "operations/overview.html", {"o": selectors.operations_overview()})
