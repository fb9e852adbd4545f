"""import_images with titles and tags from a CSV, a dry run and a summary with reasons."""

from __future__ import annotations

import shutil

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from gallery.catalog.models import Image, Tag
from tests.conftest import DATASET, photo_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path, butterflies):  # type: ignore[no-untyped-def]
    root = tmp_path / "import"
    (root / "images").mkdir(parents=True)
    for group in list(butterflies.values())[:3]:
        for path in group[:2]:
            shutil.copy(path, root / "images" / path.name)
    (root / "images" / "broken.jpg").write_bytes(photo_bytes()[:500])
    return root


def test_dry_run_reports_and_stores_nothing_then_the_import_applies_the_csv(folder, capsys, media_files) -> None:  # type: ignore[no-untyped-def]
    args = [str(folder), "--no-progress", "--csv", str(DATASET / "labels.csv"), "--title-column", "common_name"]
    args += ["--tags-column", "latin_name"]
    call_command("import_images", *args, "--dry-run")
    out = capsys.readouterr()
    assert "would import 6, skipped 0 already in the catalog, rejected 1 (dry run" in out.out
    assert "broken.jpg" in out.err and "damaged or truncated" in out.err
    assert Image.objects.count() == 0 and not Tag.objects.exists() and media_files() == []

    call_command("import_images", *args)
    assert "imported 6, skipped 0 already in the catalog, rejected 1" in capsys.readouterr().out
    monarch = Image.objects.get(original_name="0010001.jpg")
    assert monarch.title == "Monarch" and list(monarch.tags.values_list("name", flat=True)) == ["danaus plexippus"]
    assert Image.objects.filter(status=Image.Status.READY).count() == 6
    assert Tag.objects.get(name="danaus plexippus").images.count() == 2

    call_command("import_images", *args)
    assert "imported 0, skipped 6 already in the catalog, rejected 1" in capsys.readouterr().out


def test_a_csv_without_the_named_columns_is_refused_before_anything_is_stored(folder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\n0010001.jpg,x\n")
    with pytest.raises(CommandError, match="no 'filename' column"):
        call_command("import_images", str(folder), "--no-progress", "--csv", str(bad))
    with pytest.raises(CommandError, match="no column species"):
        call_command(
            "import_images", str(folder), "--no-progress", "--csv", str(DATASET / "labels.csv"), "--tags-column", "species"
        )
    assert Image.objects.count() == 0
