"""Backups and restores: a real catalog (butterfly photos embedded by the eager pipeline, a
protected work, a reviewed match that hid its upload) is backed up, wiped and restored,
and then answers every search as before, with the same decisions and pictures. A damaged
or hostile backup is refused before anything changes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection
from PIL import Image as PILImage
from PIL import ImageOps

from gallery.catalog import selectors as catalog_selectors
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Embedding, Image
from gallery.copyright import services as copyright_services
from gallery.copyright.models import CopyMatch, MatchDecision
from gallery.copyright.selectors import catalog_keypoints, copy_index
from gallery.operations import services as backup_services
from gallery.operations.models import BackupRecord
from gallery.search import selectors as search_selectors
from gallery.search.index import catalog_index
from gallery.search.models import Reduction
from tests.conftest import photo_bytes

# A restore replaces the whole database, which SQLite's backup API does only outside a
# transaction; the rows the migrations create (the copyright group) come back afterwards.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _file(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def _jpeg(image: PILImage.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _upload(data: bytes, name: str) -> Image:
    return Image.objects.get(pk=catalog_services.image_create(file=_file(data, name), original_name=name).pk)


def _stored(settings) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    roots = {"media": Path(settings.MEDIA_ROOT), "private": Path(settings.PRIVATE_MEDIA_ROOT)}
    return {
        f"{k}/{p.relative_to(r)}": p.read_bytes() for k, r in roots.items() if r.exists() for p in r.rglob("*") if p.is_file()
    }


def _wipe(settings) -> None:  # type: ignore[no-untyped-def]
    """A new, empty install: an empty database (migrated) and no files."""
    call_command("flush", interactive=False, verbosity=0)
    for root in (settings.MEDIA_ROOT, settings.PRIVATE_MEDIA_ROOT):
        shutil.rmtree(root, ignore_errors=True)
    catalog_index.clear()
    copy_index.clear()
    catalog_keypoints.clear()


def _top10(queries: list[Path]) -> list[list[tuple[int, float]]]:
    out = []
    for q in queries:
        with q.open("rb") as f:
            hits = search_selectors.search_by_image(file=f, limit=10)
        out.append([(h.image.pk, round(h.score, 5)) for h in hits])
    return out


def _decisions() -> list[tuple[object, ...]]:
    return list(
        MatchDecision.objects.order_by("id").values_list(
            "action", "note", "hid_upload", "decided_by__username", "work_checksum", "image_checksum", "match__status"
        )
    )


@pytest.fixture
def catalog(butterflies):  # type: ignore[no-untyped-def]
    """Sixteen butterflies of four species (enough for a PCA), a protected work, a mirrored
    copy of it uploaded and confirmed by a reviewer, who hid it."""
    for species in ("001", "002", "005", "007"):
        for path in butterflies[species][:4]:
            _upload(path.read_bytes(), path.name)
    work_path = butterflies["004"][0]
    work = copyright_services.protected_work_register(
        file=_file(work_path.read_bytes(), "work.jpg"), title="Swallowtail", rights_holder="Lepido Press"
    )
    copy = _upload(_jpeg(ImageOps.mirror(PILImage.open(work_path))), "mirrored.jpg")
    reviewer = User.objects.create_user("reviewer", password="pw-reviewer-1", is_superuser=True)
    match = CopyMatch.objects.get(work=work, image=copy)
    copyright_services.match_decide(
        match_id=match.pk, action="confirm", decided_by=reviewer, seen_status="pending", note="mirrored", hide_upload=True
    )
    return {"work": work, "copy": copy, "queries": [butterflies[s][6] for s in ("001", "002", "005", "007")]}


@pytest.mark.slow
def test_backup_wipe_restore_gives_the_same_searches_decisions_and_pictures(catalog, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _round_trip(catalog, settings, tmp_path)


@pytest.mark.postgres
def test_on_postgresql_pg_dump_and_pg_restore_give_the_same_searches_and_decisions(catalog, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert connection.vendor == "postgresql", "run with DATABASE_URL naming a PostgreSQL database (scripts/test.sh does)"
    _round_trip(catalog, settings, tmp_path)
    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_text())
    assert manifest["database"]["file"] == "database.pgdump"
    assert (tmp_path / "b1" / "database.pgdump").read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format


def _round_trip(catalog, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert Reduction.objects.filter(is_active=True).exists()  # the PCA space is what gets restored
    assert Image.objects.get(pk=catalog["copy"].pk).visibility == Image.Visibility.HIDDEN
    before_search = _top10(catalog["queries"])
    before_decisions = _decisions()
    before_files = _stored(settings)
    assert any(name.startswith("private/withheld/") for name in before_files)  # the hidden upload's pictures
    assert any(name.startswith("private/protected/") for name in before_files)
    embeddings = Embedding.objects.count()

    out = io.StringIO()
    call_command("backup", str(tmp_path / "b1"), stdout=out)
    assert f"{len(before_files)} files" in out.getvalue()
    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_text())
    assert manifest["search_space"]["backbone"] == "efficientnet_lite0"
    assert manifest["search_space"]["reductions"][0]["dims"] == 8
    assert ["gallery", "0011_backup_record"] in manifest["migrations"]
    assert manifest["missing"] == [] and len(manifest["files"]) == len(before_files)

    _wipe(settings)
    assert _top10(catalog["queries"][:1]) == [[]] and _stored(settings) == {}

    out = io.StringIO()
    call_command("restore", str(tmp_path / "b1"), stdout=out)
    assert "17 images, 1 protected works" in out.getvalue()
    assert _top10(catalog["queries"]) == before_search  # rebuilt from the restored vectors
    assert Embedding.objects.count() == embeddings  # nothing was embedded again
    assert _decisions() == before_decisions
    assert _stored(settings) == before_files
    copy = Image.objects.get(pk=catalog["copy"].pk)
    assert copy.visibility == Image.Visibility.HIDDEN
    picture = catalog_selectors.image_picture_open(image=copy, kind="thumbnail")
    assert picture is not None and picture.read()[:2] == b"\xff\xd8"
    # The copyright index reloads from the restored signatures: the same copy is found again.
    unrelated = _jpeg(ImageOps.mirror(PILImage.open(catalog["queries"][0])))
    assert copyright_services.upload_match(image_id=_upload(unrelated, "unrelated.jpg").pk) == []
    assert [m.work_id for m in copyright_services.upload_match(image_id=copy.pk)] == [catalog["work"].pk]
    assert BackupRecord.objects.filter(kind=BackupRecord.Kind.RESTORE).count() == 1


def _small_install() -> list[Image]:
    return [_upload(photo_bytes(seed=s), f"p{s}.jpg") for s in range(3)]


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target", ["database.sqlite3", "files"])
def test_a_tampered_backup_is_refused_and_nothing_changes(target, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _small_install()
    call_command("backup", str(tmp_path / "b"), stdout=io.StringIO())
    if target == "files":
        _tamper(next(p for p in (tmp_path / "b" / "files").rglob("*") if p.is_file()))
    else:
        _tamper(tmp_path / "b" / target)
    extra = _upload(photo_bytes(seed=99), "after-the-backup.jpg")
    ids, files = sorted(Image.objects.values_list("id", flat=True)), _stored(settings)
    with pytest.raises(CommandError, match=r"does not match its checksum.*\[checksum_mismatch\] Nothing was changed"):
        call_command("restore", str(tmp_path / "b"), "--force")
    assert sorted(Image.objects.values_list("id", flat=True)) == ids and extra.pk in ids
    assert _stored(settings) == files
    # Into an empty install too: it stays empty.
    _wipe(settings)
    with pytest.raises(CommandError, match="checksum_mismatch"):
        call_command("restore", str(tmp_path / "b"))
    assert not Image.objects.exists() and _stored(settings) == {}


def test_a_restore_into_an_install_with_images_needs_force(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = _small_install()
    call_command("backup", str(tmp_path / "b"), stdout=io.StringIO())
    Image.objects.filter(pk=first[0].pk).update(title="changed after the backup")
    with pytest.raises(CommandError, match=r"already holds images.*--force.*\[target_not_empty\]"):
        call_command("restore", str(tmp_path / "b"))
    assert Image.objects.get(pk=first[0].pk).title == "changed after the backup"
    call_command("restore", str(tmp_path / "b"), "--force", stdout=io.StringIO())
    assert Image.objects.get(pk=first[0].pk).title == ""


@pytest.mark.parametrize(
    "path", ["../../escaped.jpg", "/etc/passwd", "originals/../../x.jpg", "originals//x.jpg", "C:/x.jpg", "a\\..\\b"]
)
def test_a_manifest_naming_paths_outside_the_stores_is_refused(path, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _small_install()
    call_command("backup", str(tmp_path / "b"), stdout=io.StringIO())
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # The attacker also plants a file whose checksum matches, where the path leads.
    manifest["files"][0]["path"] = path
    manifest_path.write_text(json.dumps(manifest))
    _wipe(settings)
    with pytest.raises(CommandError, match=r"unsafe path.*\[unsafe_path\]"):
        call_command("restore", str(tmp_path / "b"))
    assert not Image.objects.exists() and _stored(settings) == {}
    assert not (tmp_path / "escaped.jpg").exists()


def test_a_backup_file_that_is_a_link_out_of_the_backup_is_refused(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _small_install()
    call_command("backup", str(tmp_path / "b"), stdout=io.StringIO())
    victim = next(p for p in (tmp_path / "b" / "files").rglob("*") if p.is_file())
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(outside)
    _wipe(settings)
    with pytest.raises(CommandError, match="unsafe_path"):
        call_command("restore", str(tmp_path / "b"))
    assert not Image.objects.exists()


@pytest.mark.parametrize(
    ("content", "code"),
    [(None, "no_manifest"), ("not json", "bad_manifest"), ('{"format": 1}', "bad_manifest"), ('{"format": 7}', "bad_manifest")],
)
def test_a_missing_or_broken_manifest_is_refused(content, code, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _small_install()
    call_command("backup", str(tmp_path / "b"), stdout=io.StringIO())
    manifest = tmp_path / "b" / "manifest.json"
    if content is None:
        manifest.unlink()
    else:
        manifest.write_text(content)
    _wipe(settings)
    with pytest.raises(CommandError, match=rf"\[{code}\]"):
        call_command("restore", str(tmp_path / "b"))
    assert not Image.objects.exists()


def test_a_backup_copies_what_its_snapshot_names_and_reports_files_gone(settings, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Uploads after the snapshot are not in the backup; a file deleted between the
    snapshot and the copy is listed as missing, not an error."""
    images = _small_install()
    take_snapshot = backup_services._snapshot_sqlite
    state: dict[str, Image] = {}

    def snapshot_then_change(target: Path):  # type: ignore[no-untyped-def]
        taken = take_snapshot(target)
        state["late"] = _upload(photo_bytes(seed=50), "late.jpg")
        images[0].thumbnail.storage.delete(images[0].thumbnail.name)
        return taken

    monkeypatch.setattr(backup_services, "_snapshot_sqlite", snapshot_then_change)
    err = io.StringIO()
    call_command("backup", str(tmp_path / "b"), stdout=io.StringIO(), stderr=err)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["missing"] == [f"media/{images[0].thumbnail.name}"]
    assert "1 files named by the database were gone" in err.getvalue()
    named = {e["path"] for e in manifest["files"]}
    assert state["late"].file.name not in named and images[1].file.name in named
    _wipe(settings)
    call_command("restore", str(tmp_path / "b"), stdout=io.StringIO())
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["p0.jpg", "p1.jpg", "p2.jpg"]


def test_a_row_naming_a_path_outside_the_stores_is_not_followed(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the product")
    image = _small_install()[0]
    Image.objects.filter(pk=image.pk).update(thumbnail="../secret.txt")
    call_command("backup", str(tmp_path / "b"), stdout=io.StringIO(), stderr=io.StringIO())
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["missing"] == ["media/../secret.txt"]
    assert not any("secret" in p.name for p in (tmp_path / "b").rglob("*"))


def test_backing_up_into_a_folder_that_holds_files_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(CommandError, match="backup_dir_not_empty"):
        call_command("backup", str(tmp_path / "b"))
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["notes.txt"]
