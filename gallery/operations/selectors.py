"""What the staff operations page shows: the doctor's checks (the same functions), the
lanes with their queue depths and workers, what failed in the last hour and why, the
catalog's counts, the active search space and the last backup."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

from gallery.catalog.models import Embedding, Image
from gallery.copyright.models import ProtectedWork
from gallery.curation.models import CatalogJob
from gallery.operations.checks import BrokerState, Check, broker_state, run_checks, worst
from gallery.operations.models import BackupRecord
from gallery.search.models import CatalogState, Reduction

FAILURES_SHOWN = 50


@dataclass(frozen=True)
class Failure:
    kind: str
    what: str
    reason: str
    at: datetime | None


@dataclass
class Overview:
    checks: list[Check]
    broker: BrokerState
    failures: list[Failure]
    failures_total: int
    images_by_status: list[tuple[str, int]]
    hidden: int
    embeddings_by_backbone: list[tuple[str, int]]
    works_by_status: list[tuple[str, int]]
    backbone: str
    target_backbone: str
    reductions: list[Reduction] = field(default_factory=list)
    last_backup: BackupRecord | None = None
    last_restore: BackupRecord | None = None

    @property
    def status(self) -> str:
        return worst(self.checks)


def recent_failures(*, since: datetime, limit: int = FAILURES_SHOWN) -> tuple[list[Failure], int]:
    """Images that failed processing, catalog jobs that failed and protected works whose
    analysis failed since `since`, newest first, with the reason each recorded."""
    images = Image.objects.filter(status=Image.Status.FAILED, updated_at__gte=since).order_by("-updated_at")
    jobs = CatalogJob.objects.filter(status=CatalogJob.Status.FAILED, updated_at__gte=since).order_by("-updated_at")
    works = ProtectedWork.objects.filter(status=ProtectedWork.Status.FAILED, created_at__gte=since).order_by("-created_at")
    total = images.count() + jobs.count() + works.count()
    found = [Failure("image", f"{i} (#{i.pk})", i.status_reason or "no reason recorded", i.updated_at) for i in images[:limit]]
    found += [Failure("job", str(j), j.message or "no reason recorded", j.updated_at) for j in jobs[:limit]]
    found += [Failure("protected work", str(w), w.status_reason or "no reason recorded", w.created_at) for w in works[:limit]]
    found.sort(key=lambda f: f.at or since, reverse=True)
    return found[:limit], total


def _counts(rows: list[dict[str, object]], key: str, labels: dict[str, str]) -> list[tuple[str, int]]:
    got = {str(r[key]): int(r["n"]) for r in rows}  # type: ignore[call-overload]
    return [(label, got.get(value, 0)) for value, label in labels.items()]


def operations_overview(*, broker_timeout: float | None = None) -> Overview:
    """Everything the operations page shows, the broker asked once with a short timeout."""
    broker = broker_state(timeout=broker_timeout)
    results = run_checks(broker=broker)
    failures, total = recent_failures(since=timezone.now() - timedelta(hours=1))
    by_status = list(Image.objects.values("status").annotate(n=Count("id")))
    state = CatalogState.objects.filter(pk=1).first()
    backbone = state.backbone if state else ""
    return Overview(
        checks=results,
        broker=broker,
        failures=failures,
        failures_total=total,
        images_by_status=_counts(by_status, "status", dict(Image.Status.choices)),
        hidden=Image.objects.filter(visibility=Image.Visibility.HIDDEN).count(),
        embeddings_by_backbone=[
            (r["backbone"], r["n"]) for r in Embedding.objects.values("backbone").annotate(n=Count("id")).order_by("backbone")
        ],
        works_by_status=_counts(
            list(ProtectedWork.objects.values("status").annotate(n=Count("id"))), "status", dict(ProtectedWork.Status.choices)
        ),
        backbone=backbone,
        target_backbone=state.target_backbone if state else "",
        reductions=list(Reduction.objects.filter(Q(is_active=True)).order_by("backbone")),
        last_backup=BackupRecord.objects.filter(kind=BackupRecord.Kind.BACKUP).first(),
        last_restore=BackupRecord.objects.filter(kind=BackupRecord.Kind.RESTORE).first(),
    )
