"""Copyright monitoring pages: the review queue, one match, protected works.

Only copyright staff (the group) and superusers get in: anonymous visitors are sent to
log in, everyone else gets 403.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import selectors, services
from .copyright_forms import DecisionForm, QueueFilterForm, WorkForm
from .models import CopyMatch, ProtectedWork


def copyright_staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not selectors.user_is_copyright_staff(user=request.user):
            raise PermissionDenied("Only copyright staff may see this.")
        return view(request, *args, **kwargs)

    return wrapped


def _threshold_context() -> dict[str, float]:
    conf = settings.COPYRIGHT
    return {
        "threshold": conf["THRESHOLD"],
        "measured_precision": conf["MEASURED_PRECISION"],
        "measured_recall": conf["MEASURED_RECALL"],
    }


@copyright_staff_required
@require_GET
def match_queue(request: HttpRequest) -> HttpResponse:
    form = QueueFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    rows = selectors.copy_matches(
        status=filters.get("status") or "",
        rights_holder=filters.get("rights_holder") or "",
        order=filters.get("order") or "newest",
    )
    page = Paginator(rows, settings.COPYRIGHT["PAGE_SIZE"]).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "holders": selectors.rights_holders(), "query": query.urlencode()}
    return render(request, "copyright/queue.html", {**context, **_threshold_context()})


@copyright_staff_required
@require_GET
def match_detail(request: HttpRequest, pk: int) -> HttpResponse:
    match = get_object_or_404(CopyMatch.objects.select_related("work", "image"), pk=pk)
    return _render_detail(request, match, DecisionForm())


def _render_detail(request: HttpRequest, match: CopyMatch, form: DecisionForm, status: int = 200) -> HttpResponse:
    decisions = match.decisions.select_related("decided_by")
    context = {"match": match, "form": form, "decisions": decisions, **_threshold_context()}
    return render(request, "copyright/match.html", context, status=status)


@copyright_staff_required
@require_POST
def match_decide(request: HttpRequest, pk: int) -> HttpResponse:
    match = get_object_or_404(CopyMatch.objects.select_related("work", "image"), pk=pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return _render_detail(request, match, form, status=400)
    try:
        decision = services.match_decide(
            match=match,
            action=form.cleaned_data["action"],
            decided_by=request.user,  # type: ignore[arg-type]
            note=form.cleaned_data["note"],
            hide_upload=form.cleaned_data["hide_upload"],
        )
    except services.DecisionRejected as exc:
        form.add_error(None, str(exc))
        return _render_detail(request, match, form, status=400)
    messages.success(request, f"{decision.get_action_display()}: {match.work.title}.")
    return redirect("gallery:copyright_match", pk=match.pk)


@copyright_staff_required
@require_GET
def work_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.protected_works(), settings.COPYRIGHT["PAGE_SIZE"]).get_page(request.GET.get("page"))
    return render(request, "copyright/works.html", {"page": page})


@copyright_staff_required
@require_http_methods(["GET", "POST"])
def work_register(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "copyright/register.html", {"form": WorkForm()})
    form = WorkForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "copyright/register.html", {"form": form}, status=400)
    data = form.cleaned_data
    try:
        work = services.protected_work_register(
            file=data["file"],
            title=data["title"],
            rights_holder=data["rights_holder"],
            reference=data["reference"],
            note=data["note"],
            registered_by=request.user,  # type: ignore[arg-type]
        )
    except services.WorkRejected as exc:
        form.add_error("file", str(exc))
        return render(request, "copyright/register.html", {"form": form}, status=400)
    messages.success(request, f"Registered “{work.title}”; the catalog is being checked for copies.")
    return redirect("gallery:copyright_works")


@copyright_staff_required
@require_GET
def work_file(request: HttpRequest, pk: int) -> FileResponse:
    """The protected image itself, never published under /media/ links in the pages."""
    work = get_object_or_404(ProtectedWork, pk=pk)
    return FileResponse(work.file.open("rb"))
