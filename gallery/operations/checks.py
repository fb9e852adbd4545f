"""The health checks of an install, each one line with OK, WARN or FAIL and what to do:
`manage.py doctor` prints them and the staff operations page shows them, so both agree.

Every check is a read and bounded in time: the broker is asked with a short timeout and,
when it does not answer, the worker checks say so instead of waiting.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Max, Min
from django.utils import timezone
from kombu import Connection
from kombu.exceptions import ChannelError

from gallery.catalog.models import Image
from gallery.operations.models import BackupRecord
from gallery.search.models import CatalogState
from gallery.vision.backbones import (
    BACKBONES,
    RESNET50,
    backbone_availability,
    describe_pooling,
    network_of,
    parse_embedding_name,
)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class LaneState:
    name: str
    depth: int | None = None  # messages waiting; None when the broker did not say
    workers: list[str] = field(default_factory=list)


@dataclass
class BrokerState:
    """What the broker said within the timeout: reachable or why not, the lanes' queue
    depths and the workers consuming each lane."""

    reachable: bool
    error: str = ""
    eager: bool = False
    workers_answered: bool = False
    lanes: list[LaneState] = field(default_factory=list)


def lanes() -> list[str]:
    """The Celery queues the workers must consume (one per lane)."""
    return [q.name for q in settings.CELERY_TASK_QUEUES]


def _conf() -> dict[str, Any]:
    return settings.IMAGESEARCH["OPERATIONS"]  # type: ignore[no-any-return]


def broker_state(*, timeout: float | None = None) -> BrokerState:
    """Ask the broker for each lane's depth and the workers for their queues, each within
    `timeout` seconds (a dead broker costs one failed connection attempt)."""
    timeout = float(timeout if timeout is not None else _conf()["BROKER_TIMEOUT_SECONDS"])
    names = lanes()
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return BrokerState(reachable=True, eager=True, lanes=[LaneState(n) for n in names])
    options = {
        **getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}),
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "max_retries": 0,
    }
    conn = Connection(settings.CELERY_BROKER_URL, connect_timeout=timeout, transport_options=options)
    try:
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        except Exception as exc:  # every transport raises its own errors
            return BrokerState(reachable=False, error=f"{type(exc).__name__}: {exc}"[:300], lanes=[LaneState(n) for n in names])
        states = []
        channel = conn.default_channel
        for name in names:
            try:
                depth = int(channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:  # never declared: nothing waits there
                depth = 0
            except Exception:  # a broker that cannot count
                depth = None
            states.append(LaneState(name, depth))
        from imagesearch.celery import app

        try:
            replies = app.control.inspect(timeout=timeout, connection=conn).active_queues() or {}
            answered = True
        except Exception:
            replies, answered = {}, False
        for worker, queues in sorted(replies.items()):
            consumed = {q.get("name") for q in queues or []}
            for state in states:
                if state.name in consumed:
                    state.workers.append(worker)
        return BrokerState(reachable=True, workers_answered=answered, lanes=states)
    finally:
        conn.release()


# ---------------------------------------------------------------- the checks


def check_database() -> Check:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return Check("database", FAIL, f"unreachable: {exc}"[:300], "Check DATABASE_URL and that the database server runs.")
    return Check("database", OK, f"{connection.vendor} reachable")


def check_migrations() -> Check:
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        return Check("migrations", FAIL, f"cannot read the migration state: {exc}"[:300], "Fix the database first.")
    if plan:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:3])
        return Check("migrations", FAIL, f"{len(plan)} not applied ({names})", "Run: python manage.py migrate")
    return Check("migrations", OK, "all applied")


def _needed_backbones() -> set[str]:
    needed = set()
    configured = str(settings.IMAGESEARCH["BACKBONE"])
    if configured != "auto":
        needed.add(configured)
    try:
        state = CatalogState.objects.filter(pk=1).first()
    except DatabaseError:
        state = None
    if state is not None:
        needed |= {network_of(state.backbone), network_of(state.target_backbone)} - {""}
    return needed


def check_backbones() -> list[Check]:
    """One line per backbone: its weights present or how to install them. A backbone the
    catalog or the settings use is a FAIL when missing; any other a WARN."""
    needed = _needed_backbones()
    auto = settings.IMAGESEARCH["BACKBONE"] == "auto"
    out = []
    for name in BACKBONES:
        found = backbone_availability(name, resnet50_weights=settings.IMAGESEARCH["RESNET50_WEIGHTS"] or None)
        if found.available:
            out.append(Check(f"backbone {name}", OK, "weights present" + (" (in use)" if name in needed else "")))
            continue
        status = FAIL if name in needed else WARN
        detail = found.reason + (" auto falls back to EfficientNet-Lite0." if auto and name == RESNET50 else "")
        if name in needed:
            detail += " The catalog or the settings use it."
        out.append(Check(f"backbone {name}", status, detail, found.install))
    return out


def check_broker(state: BrokerState) -> Check:
    if state.eager:
        return Check("broker", OK, "tasks run in this process (CELERY_TASK_ALWAYS_EAGER)")
    if not state.reachable:
        return Check(
            "broker",
            FAIL,
            f"broker unreachable ({state.error})",
            "Start Redis (or the broker CELERY_BROKER_URL names) and check the URL.",
        )
    depths = ", ".join(f"{lane.name} {lane.depth if lane.depth is not None else '?'}" for lane in state.lanes)
    return Check("broker", OK, f"reachable; waiting tasks: {depths}")


def check_workers(state: BrokerState) -> list[Check]:
    """One line per lane: the workers consuming it, or FAIL naming the lane none serves."""
    out = []
    for lane in state.lanes:
        name = f"workers {lane.name}"
        if state.eager:
            out.append(Check(name, OK, "tasks run in this process"))
        elif not state.reachable:
            out.append(Check(name, FAIL, "unknown: broker unreachable", "Fix the broker first."))
        elif not lane.workers:
            out.append(
                Check(
                    name,
                    FAIL,
                    f"no worker answers on lane {lane.name}" + (f" ({lane.depth} tasks waiting)" if lane.depth else ""),
                    f"Start a worker: celery -A imagesearch worker -Q interactive,bulk (it must consume {lane.name}).",
                )
            )
        else:
            out.append(Check(name, OK, f"{len(lane.workers)} alive: {', '.join(lane.workers)}"))
    return out


def _places() -> list[tuple[str, Path]]:
    return [
        ("media", Path(settings.MEDIA_ROOT)),
        ("private", Path(settings.PRIVATE_MEDIA_ROOT)),
        ("var", Path(settings.VAR_DIR)),
    ]


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk() -> list[Check]:
    conf = _conf()
    out = []
    for label, path in _places():
        free = shutil.disk_usage(_existing(path)).free
        text = f"{free // MB} MB free at {path}"
        hint = f"Free space on the volume of {path} or move it (see docs/operations.md)."
        if free < conf["DISK_FAIL_MB"] * MB:
            out.append(Check(f"disk {label}", FAIL, text, hint))
        elif free < conf["DISK_WARN_MB"] * MB:
            out.append(Check(f"disk {label}", WARN, text, hint))
        else:
            out.append(Check(f"disk {label}", OK, text))
    return out


def check_writable() -> list[Check]:
    out = []
    for label, path in _places():
        target = path if path.exists() else _existing(path)
        try:
            with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-"):
                pass
        except OSError as exc:
            out.append(
                Check(
                    f"writable {label}",
                    FAIL,
                    f"{target} is not writable by this process ({exc.strerror})",
                    f"Give the user running the product write access to {target}.",
                )
            )
            continue
        out.append(Check(f"writable {label}", OK, f"{path}" + ("" if path.exists() else " (will be created)")))
    return out


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h"


def check_embedding() -> Check:
    """Images waiting while nothing was embedded for STALL_MINUTES: the workers are stuck
    or gone."""
    stall = timedelta(minutes=_conf()["STALL_MINUTES"])
    now = timezone.now()
    waiting = Image.objects.filter(status__in=[Image.Status.PENDING, Image.Status.PROCESSING])
    count = waiting.count()
    last = Image.objects.aggregate(last=Max("embedded_at"))["last"]
    since = f"last embedding {_ago(now - last)} ago" if last else "nothing embedded yet"
    if not count:
        return Check("embedding", OK, f"no image waiting; {since}")
    oldest = waiting.aggregate(oldest=Min("created_at"))["oldest"]
    if oldest is not None and now - oldest > stall and (last is None or now - last > stall):
        return Check(
            "embedding",
            WARN,
            f"{count} images waiting, the oldest for {_ago(now - oldest)}; {since}",
            "Check the worker lines above and the workers' logs; the sweep queues waiting images again.",
        )
    return Check("embedding", OK, f"{count} images waiting; {since}")


def check_pooling() -> Check:
    """The catalog's vectors pooled otherwise than the settings ask for (GeM exponent,
    centre region): search keeps using the catalog's own until a re-embed switches it."""
    state = CatalogState.objects.filter(pk=1).first()
    if state is None:
        return Check("pooling", OK, "no catalog yet: it will be embedded with the configured pooling")
    network, p, centre = parse_embedding_name(state.backbone)
    conf = settings.IMAGESEARCH
    wanted, wanted_centre = float(conf["GEM_P"]), bool(conf["CENTRE_REGION"])
    have = describe_pooling(p, centre)
    if (p, centre) == (wanted, wanted_centre):
        return Check("pooling", OK, f"the catalog is embedded with {have}, as configured")
    if state.target_backbone:
        return Check("pooling", OK, f"{have} now; a migration to {state.target_backbone} is in progress")
    return Check(
        "pooling",
        WARN,
        f"the catalog is embedded with {have}; IMAGESEARCH_GEM_P and IMAGESEARCH_CENTRE_REGION ask for "
        f"{describe_pooling(wanted, wanted_centre)} (search keeps the catalog's pooling until a re-embed)",
        f"Run: python manage.py reembed --backbone {network} (resumable), or Re-embed on the admin's catalog page.",
    )


def check_copy_keypoints() -> Check:
    """Ready images without stored keypoints (uploaded before copy scans used them, or
    missed by a worker) for longer than STALL_MINUTES: a newly registered work would not
    find its crops and pastes among them."""
    from gallery.vision import localfeatures

    settled = timezone.now() - timedelta(minutes=_conf()["STALL_MINUTES"])
    missing = (
        Image.objects.filter(status=Image.Status.READY, embedded_at__lt=settled)
        .exclude(copy_keypoints__version=localfeatures.VERSION)
        .count()
    )
    if not missing:
        return Check("copy keypoints", OK, "every ready image has its keypoints for copy scans")
    return Check(
        "copy keypoints",
        WARN,
        f"{missing} ready images have no keypoints: a newly registered work would not find its crops and pastes among them",
        "Run: python manage.py index_keypoints (resumable), or Store keypoints on the admin's catalog page.",
    )


def check_backup() -> Check:
    last = BackupRecord.objects.filter(kind=BackupRecord.Kind.BACKUP).first()
    if last is None:
        return Check("backup", WARN, "no backup recorded", "Run: python manage.py backup DIR (see docs/operations.md).")
    age = timezone.now() - last.taken_at
    text = f"last {_ago(age)} ago into {last.directory} ({last.size / MB:.1f} MB, {last.files} files)"
    if age > timedelta(hours=_conf()["BACKUP_MAX_AGE_HOURS"]):
        return Check("backup", WARN, text, "Take a backup: python manage.py backup DIR")
    return Check("backup", OK, text)


def run_checks(*, broker: BrokerState | None = None) -> list[Check]:
    """Every check, in the order a person fixes them: database, migrations, backbones,
    broker, workers, disk, permissions, progress, backups."""
    database = check_database()
    checks = [database]
    db_ok = database.status == OK
    migrations = check_migrations() if db_ok else Check("migrations", FAIL, "unknown: database unreachable")
    checks.append(migrations)
    checks += check_backbones()
    state = broker if broker is not None else broker_state()
    checks.append(check_broker(state))
    checks += check_workers(state)
    checks += check_disk()
    checks += check_writable()
    if migrations.status == OK:
        try:
            checks += [check_embedding(), check_pooling(), check_copy_keypoints(), check_backup()]
        except DatabaseError as exc:
            checks.append(Check("catalog", FAIL, f"cannot read the catalog: {exc}"[:300], "Run: python manage.py migrate"))
    return checks


def worst(checks: list[Check]) -> str:
    statuses = {c.status for c in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK
