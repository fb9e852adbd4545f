"""`manage.py doctor` and the staff operations page: one set of checks, each saying what is
wrong and what to do; the page is for staff only and stays quick without a broker."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from benchmarks.livestack import free_port, redis_executable
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.curation.models import CatalogJob
from gallery.operations import checks
from imagesearch.broker import start_redis
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _doctor(*args: str) -> tuple[dict[str, dict[str, str]], bool]:
    """The doctor's checks by name, and whether it exited with a failure."""
    out = io.StringIO()
    failed = False
    try:
        call_command("doctor", "--json", *args, stdout=out)
    except CommandError as exc:
        assert exc.returncode == 1
        failed = True
    report = json.loads(out.getvalue())
    return {c["name"]: c for c in report["checks"]}, failed


def _upload(seed: int, name: str = "") -> Image:
    f = io.BytesIO(photo_bytes(seed=seed))
    f.name = name or f"p{seed}.jpg"
    return catalog_services.image_create(file=f, original_name=f.name, queue=False)


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real Redis on loopback with no worker listening."""
    port = free_port()
    proc = start_redis(port=port, directory=tmp_path / "redis", persist=False, executable=redis_executable())
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def real_broker(settings):  # type: ignore[no-untyped-def]
    def use(url: str) -> None:
        settings.CELERY_TASK_ALWAYS_EAGER = False
        settings.CELERY_BROKER_URL = url

    return use


def test_doctor_reports_a_missing_resnet50_weights_file_and_how_to_install_it(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "resnet50_notop.h5"
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "RESNET50_WEIGHTS": str(missing)}
    found, failed = _doctor()
    line = found["backbone resnet50"]
    assert line["status"] == "WARN" and str(missing) in line["detail"] and "IMAGESEARCH_RESNET50_WEIGHTS" in line["hint"]
    assert found["backbone efficientnet_lite0"]["status"] == "OK"
    assert not failed  # a backbone nobody uses is a warning

    # The same file missing while the settings choose ResNet50: a failure, and the exit status says so.
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "BACKBONE": "resnet50"}
    found, failed = _doctor()
    assert found["backbone resnet50"]["status"] == "FAIL" and failed


def test_doctor_says_ok_for_a_healthy_eager_install(settings) -> None:  # type: ignore[no-untyped-def]
    found, failed = _doctor()
    assert found["database"]["status"] == "OK" and found["migrations"]["status"] == "OK"
    assert found["workers interactive"]["status"] == "OK" and found["workers bulk"]["status"] == "OK"
    assert found["backup"]["status"] == "WARN" and "manage.py backup" in found["backup"]["hint"]
    assert not failed


def test_doctor_fails_each_lane_no_worker_answers_on(redis_url, real_broker) -> None:  # type: ignore[no-untyped-def]
    real_broker(redis_url)
    from imagesearch.celery import app

    with app.connection_for_write(redis_url) as conn:
        producer = app.amqp.Producer(conn)
        for _ in range(3):
            app.send_task("gallery.prune_catalog_changes", queue="bulk", producer=producer)
    found, failed = _doctor("--timeout", "0.5")
    assert failed
    assert found["broker"]["status"] == "OK" and "bulk 3" in found["broker"]["detail"]
    assert found["workers interactive"]["status"] == "FAIL"
    assert "no worker answers on lane interactive" in found["workers interactive"]["detail"]
    assert "lane bulk (3 tasks waiting)" in found["workers bulk"]["detail"]
    assert "-Q interactive,bulk" in found["workers bulk"]["hint"]


def test_a_worker_serving_one_lane_leaves_the_other_failing() -> None:
    state = checks.BrokerState(
        reachable=True,
        workers_answered=True,
        lanes=[checks.LaneState("interactive", 0, ["w1@host"]), checks.LaneState("bulk", 12, [])],
    )
    by_lane = {c.name: c for c in checks.check_workers(state)}
    assert by_lane["workers interactive"].status == "OK" and "w1@host" in by_lane["workers interactive"].detail
    assert by_lane["workers bulk"].status == "FAIL" and "lane bulk (12 tasks waiting)" in by_lane["workers bulk"].detail


def test_doctor_with_the_broker_down_says_so_on_every_line_that_needs_it(real_broker) -> None:  # type: ignore[no-untyped-def]
    real_broker(f"redis://127.0.0.1:{free_port()}/0")
    found, failed = _doctor()
    assert failed
    assert found["broker"]["status"] == "FAIL" and "broker unreachable" in found["broker"]["detail"]
    assert found["workers bulk"]["detail"] == "unknown: broker unreachable"


def test_doctor_warns_when_images_wait_and_nothing_was_embedded(settings) -> None:  # type: ignore[no-untyped-def]
    image = _upload(1)
    assert _doctor()[0]["embedding"]["status"] == "OK"  # a fresh upload is not a stall
    Image.objects.filter(pk=image.pk).update(created_at=timezone.now() - timedelta(minutes=25))
    line = _doctor()[0]["embedding"]
    assert line["status"] == "WARN" and "1 images waiting, the oldest for 25 min" in line["detail"]
    assert "nothing embedded yet" in line["detail"]


def test_doctor_warns_when_ready_images_lack_the_keypoints_copy_scans_need(settings) -> None:  # type: ignore[no-untyped-def]
    image = _upload(2)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.READY, embedded_at=timezone.now())
    assert _doctor()[0]["copy keypoints"]["status"] == "OK"  # the worker stores them right after
    Image.objects.filter(pk=image.pk).update(embedded_at=timezone.now() - timedelta(minutes=25))
    line = _doctor()[0]["copy keypoints"]
    assert line["status"] == "WARN" and line["detail"].startswith("1 ready images have no keypoints")
    assert "manage.py index_keypoints" in line["hint"]
    call_command("index_keypoints", "--foreground")
    assert _doctor()[0]["copy keypoints"]["status"] == "OK"


def test_doctor_warns_when_the_catalog_is_pooled_otherwise_than_configured(settings) -> None:  # type: ignore[no-untyped-def]
    image = _upload(3)
    catalog_services.images_embed_batch(image_id=image.pk)
    assert _doctor()[0]["pooling"]["status"] == "OK"  # the test settings' GeM-3, as embedded
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GEM_P": 2.0}
    line = _doctor()[0]["pooling"]
    assert (
        line["status"] == "WARN"
        and "embedded with GeM p=3 over the whole map; IMAGESEARCH_GEM_P and IMAGESEARCH_CENTRE_REGION ask for GeM p=2 over the whole map"
        in line["detail"]
    )
    assert "manage.py reembed --backbone efficientnet_lite0" in line["hint"]


def test_doctor_fails_full_disks_and_unwritable_media(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.MEDIA_ROOT = blocker / "media"
    settings.IMAGESEARCH = {
        **settings.IMAGESEARCH,
        "OPERATIONS": {**settings.IMAGESEARCH["OPERATIONS"], "DISK_FAIL_MB": 10**12},
    }
    found, failed = _doctor()
    assert failed
    assert found["writable media"]["status"] == "FAIL" and "not writable" in found["writable media"]["detail"]
    assert found["writable private"]["status"] == "OK"
    assert found["disk var"]["status"] == "FAIL" and "MB free" in found["disk var"]["detail"]


def test_doctor_prints_one_line_per_check_with_a_fix(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "RESNET50_WEIGHTS": str(tmp_path / "gone.h5")}
    out = io.StringIO()
    call_command("doctor", stdout=out)
    lines = out.getvalue().splitlines()
    resnet = next(i for i, line in enumerate(lines) if "backbone resnet50" in line)
    assert lines[resnet].startswith("WARN") and lines[resnet + 1].strip().startswith("→ Download the Keras ResNet50")
    assert any(line.startswith("OK    database") for line in lines)


# ---------------------------------------------------------------- the operations page


@pytest.fixture
def staff_client(client):  # type: ignore[no-untyped-def]
    client.force_login(User.objects.create_user("operator", password="pw-operator-1", is_staff=True))
    return client


def test_the_operations_page_is_for_staff_only(user_client) -> None:  # type: ignore[no-untyped-def]
    url = reverse("gallery:operations")
    response = Client().get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert user_client.get(url).status_code == 403
    assert "Operations" not in user_client.get(reverse("gallery:index")).content.decode()
    assert user_client.post(url).status_code == 403


def test_the_page_shows_failures_of_the_last_hour_with_their_reasons(staff_client) -> None:  # type: ignore[no-untyped-def]
    failed, old = _upload(1, "torn.jpg"), _upload(2, "long-ago.jpg")
    Image.objects.filter(pk=failed.pk).update(status=Image.Status.FAILED, status_reason="The stored file is missing.")
    Image.objects.filter(pk=old.pk).update(status=Image.Status.FAILED, status_reason="an old failure")
    Image.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(hours=2))
    CatalogJob.objects.create(kind=CatalogJob.Kind.REFIT, status=CatalogJob.Status.FAILED, message="too few images")
    html = staff_client.get(reverse("gallery:operations")).content.decode()
    assert "2 failures" in html
    assert "torn.jpg" in html and "The stored file is missing." in html and "too few images" in html
    assert "an old failure" not in html
    assert '<th scope="row">Failed</th><td>2</td>' in html  # the counts include both


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # a backup runs outside a transaction
def test_the_page_shows_counts_space_and_the_last_backup(staff_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _upload(1), _upload(2)
    page = staff_client.get(reverse("gallery:operations")).content.decode()
    assert '<th scope="row">Pending</th><td>2</td>' in page
    assert "No backup recorded" in page
    call_command("backup", str(tmp_path / "nightly"), stdout=io.StringIO())
    page = staff_client.get(reverse("gallery:operations")).content.decode()
    assert (
        "Last backup:" in page and str(tmp_path / "nightly") in page and "6 files" in page
    )  # two originals, display copies and thumbnails


def test_the_page_answers_with_the_broker_down(staff_client, real_broker) -> None:  # type: ignore[no-untyped-def]
    real_broker(f"redis://127.0.0.1:{free_port()}/0")
    response = staff_client.get(reverse("gallery:operations"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Broker unreachable" in html and "broker unreachable" in html


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # a backup runs outside a transaction
def test_backup_directory_names_are_shown_escaped(staff_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    call_command("backup", str(tmp_path / "<b>odd</b>"), stdout=io.StringIO())
    html = staff_client.get(reverse("gallery:operations")).content.decode()
    assert "&lt;b&gt;odd&lt;/b&gt;" in html and "<b>odd</b>" not in html


def test_doctor_and_page_agree(staff_client, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "RESNET50_WEIGHTS": str(tmp_path / "missing.h5")}
    found, _ = _doctor()
    html = staff_client.get(reverse("gallery:operations")).content.decode()
    for name, line in found.items():
        assert f'<th scope="row">{name}</th><td><span class="check check-{line["status"].lower()}">' in html
