"""Copyright monitoring pages: the review queue, one match, protected works, the audit
trail of decisions.

Only copyright reviewers (the group named by IMAGESEARCH_COPYRIGHT_GROUP) and superusers
get in: anonymous visitors are sent to sign in, everyone else gets 403. The queue's
filters travel with the reviewer (in the query string) from the queue to each match, to
the next one and back.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from gallery.access import copyright_reviewer_required
from gallery.copyright import selectors as copyright_selectors
from gallery.copyright import services as copyright_services
from gallery.copyright.forms import BulkDismissForm, DecisionForm, QueueFilterForm, WorkForm
from gallery.copyright.models import CopyMatch, MatchDecision, ProtectedWork
from gallery.errors import DecisionRejected, WorkRejected


def _threshold_context() -> dict[str, float]:
    conf = settings.COPYRIGHT
    return {
        "threshold": conf["THRESHOLD"],
        "measured_precision": conf["MEASURED_PRECISION"],
        "measured_recall": conf["MEASURED_RECALL"],
    }


def _filters(request: HttpRequest) -> dict[str, str]:
    """The queue's filters from the query string (invalid values are dropped)."""
    form = QueueFilterForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    return {k: v for k in ("status", "rights_holder", "order") if (v := data.get(k) or "")}


def _with_filters(url: str, filters: dict[str, str]) -> str:
    return f"{url}?{urlencode(filters)}" if filters else url


@copyright_reviewer_required
@require_safe
def match_queue(request: HttpRequest) -> HttpResponse:
    form = QueueFilterForm(request.GET or None)
    filters = _filters(request)
    rows = copyright_selectors.copy_matches(
        status=filters.get("status", ""), rights_holder=filters.get("rights_holder", ""), order=filters.get("order", "newest")
    )
    page = Paginator(rows, settings.COPYRIGHT["PAGE_SIZE"]).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "holders": copyright_selectors.rights_holders(),
        "query": urlencode(filters),
        "bulk_form": BulkDismissForm(),
    }
    return render(request, "copyright/queue.html", {**context, **_threshold_context()})


@copyright_reviewer_required
@require_POST
def matches_dismiss(request: HttpRequest) -> HttpResponse:
    filters = _filters(request)
    form = BulkDismissForm(request.POST)
    if not form.is_valid():
        for error in form.errors.get("matches", []) + form.errors.get("note", []):
            messages.error(request, error)
        return HttpResponseRedirect(_with_filters(reverse("gallery:copyright_queue"), filters))
    ids = form.cleaned_data["matches"]
    count = copyright_services.matches_dismiss(match_ids=ids, decided_by=request.user, note=form.cleaned_data["note"])  # type: ignore[arg-type]
    skipped = len(ids) - count
    text = f"Dismissed {count} match{'es' if count != 1 else ''}."
    if skipped:
        text += f" {skipped} had been decided meanwhile and were left as they are."
    messages.success(request, text)
    return HttpResponseRedirect(_with_filters(reverse("gallery:copyright_queue"), filters))


def _render_detail(
    request: HttpRequest, match: CopyMatch, form: DecisionForm | None = None, *, error: str = "", status: int = 200
) -> HttpResponse:
    filters = _filters(request)
    if form is None:
        form = DecisionForm(initial={"seen_status": match.status})
    neighbours = copyright_selectors.pending_neighbours(
        match=match, rights_holder=filters.get("rights_holder", ""), order=filters.get("order", "newest")
    )

    def link(pk: int | None) -> str:
        return _with_filters(reverse("gallery:copyright_match", args=[pk]), filters) if pk else ""

    context = {
        "match": match,
        "form": form,
        "decisions": copyright_selectors.match_history(match=match),
        "query": urlencode(filters),
        "queue_url": _with_filters(reverse("gallery:copyright_queue"), filters),
        "previous_url": link(neighbours.previous),
        "next_url": link(neighbours.next),
        "pending_count": neighbours.pending,
        "decided": match.status != CopyMatch.Status.PENDING,
        "error": error,
        **_threshold_context(),
    }
    return render(request, "copyright/match.html", context, status=status)


@copyright_reviewer_required
@require_safe
def match_detail(request: HttpRequest, pk: int) -> HttpResponse:
    match = get_object_or_404(CopyMatch.objects.select_related("work", "image"), pk=pk)
    return _render_detail(request, match)


@copyright_reviewer_required
@require_POST
def match_decide(request: HttpRequest, pk: int) -> HttpResponse:
    match = get_object_or_404(CopyMatch.objects.select_related("work", "image"), pk=pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return _render_detail(request, match, form, status=400)  # field errors shown beside the form
    try:
        decision = copyright_services.match_decide(
            match_id=match.pk,
            action=form.cleaned_data["action"],
            decided_by=request.user,  # type: ignore[arg-type]
            seen_status=form.cleaned_data["seen_status"],
            note=form.cleaned_data["note"],
            hide_upload=form.cleaned_data["hide_upload"],
        )
    except DecisionRejected as exc:
        match.refresh_from_db()
        fresh = DecisionForm(initial={"seen_status": match.status, "note": form.cleaned_data["note"]})
        return _render_detail(request, match, fresh, error=str(exc), status=409 if exc.code == "stale" else 400)
    done = decision.get_action_display()
    if decision.hid_upload:
        done += ", upload hidden"
    if decision.published_upload:
        done += ", upload back in the gallery"
    messages.success(request, f"{done}: “{match.work.title}”.")
    return HttpResponseRedirect(_with_filters(reverse("gallery:copyright_match", args=[match.pk]), _filters(request)))


@copyright_reviewer_required
@require_safe
def decision_log(request: HttpRequest) -> HttpResponse:
    page = Paginator(copyright_selectors.decisions_audit(), settings.COPYRIGHT["PAGE_SIZE"]).get_page(request.GET.get("page"))
    return render(request, "copyright/decisions.html", {"page": page})


@copyright_reviewer_required
@require_safe
def decision_thumbnail(request: HttpRequest, pk: int, side: str) -> HttpResponse:
    """The small picture a decision kept of the work or the upload (audit trail)."""
    field = {"work": "work_thumbnail", "upload": "image_thumbnail"}.get(side)
    if field is None:
        return HttpResponse(status=404)
    data = bytes(get_object_or_404(MatchDecision.objects.only(field), pk=pk).__dict__[field] or b"")
    if not data:
        return HttpResponse(status=404)
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@copyright_reviewer_required
@require_safe
def work_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(copyright_selectors.protected_works(), settings.COPYRIGHT["PAGE_SIZE"]).get_page(request.GET.get("page"))
    return render(request, "copyright/works.html", {"page": page})


@copyright_reviewer_required
@require_http_methods(["GET", "HEAD", "POST"])
def work_register(request: HttpRequest) -> HttpResponse:
    if request.method in ("GET", "HEAD"):
        return render(request, "copyright/register.html", {"form": WorkForm()})
    form = WorkForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "copyright/register.html", {"form": form}, status=400)
    data = form.cleaned_data
    try:
        work = copyright_services.protected_work_register(
            file=data["file"],
            title=data["title"],
            rights_holder=data["rights_holder"],
            reference=data["reference"],
            note=data["note"],
            registered_by=request.user,  # type: ignore[arg-type]
        )
    except WorkRejected as exc:
        form.add_error("file", str(exc))
        return render(request, "copyright/register.html", {"form": form}, status=400)
    messages.success(request, f"Registered “{work.title}”; the catalog is being checked for copies.")
    return redirect("gallery:copyright_works")


@copyright_reviewer_required
@require_safe
def work_file(request: HttpRequest, pk: int) -> FileResponse:
    """The protected image itself, never published under /media/ links in the pages."""
    work = get_object_or_404(ProtectedWork, pk=pk)
    return FileResponse(work.file.open("rb"))
