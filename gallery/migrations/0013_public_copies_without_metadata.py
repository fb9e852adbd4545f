from django.db import migrations

# The product's own copies start with JFIF (18 bytes), then the comment segment when one
# was carried over, then under a kilobyte of tables before the image data: a metadata
# segment shows in the first bytes (its marker is enough, however long it runs).
HEAD = 8 * 1024


def rewrite_public_copies_without_metadata(apps, schema_editor):
    """Display copies and thumbnails encoded before the decoder dropped a file's metadata
    carry the uploaded JPEG's comment, in the public media (or withheld in the private
    storage while their image is hidden, until it is published again). Each such copy is
    written again without it (its image data unchanged) under a new name beside it, the
    image is pointed at it, then the old file is deleted: an interrupted run leaves every
    image with a working copy and is finished by running it again."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from gallery.storage import WITHHELD_PREFIX, private_storage
    from gallery.vision.preprocess import jpeg_has_metadata, jpeg_without_metadata

    Image = apps.get_model("gallery", "Image")
    for image in Image.objects.only("display", "thumbnail").iterator():
        for field in ("display", "thumbnail"):
            name = getattr(image, field).name
            if not name:
                continue
            for storage, prefix in ((default_storage, ""), (private_storage, WITHHELD_PREFIX)):
                stored = prefix + name
                try:
                    with storage.open(stored, "rb") as f:
                        head = f.read(HEAD)
                        if not jpeg_has_metadata(head):
                            continue
                        data = head + f.read()
                except OSError:  # not in this place
                    continue
                clean = jpeg_without_metadata(data)
                if clean is None:
                    continue
                stem, _, extension = stored.rpartition(".")
                saved = storage.save(f"{stem}-clean.{extension}", ContentFile(clean))
                Image.objects.filter(pk=image.pk).update(**{field: saved[len(prefix) :]})
                storage.delete(stored)


class Migration(migrations.Migration):
    # Row by row, each committed before its old file is deleted.
    atomic = False

    dependencies = [
        ("gallery", "0012_image_keypoints"),
    ]

    operations = [
        migrations.RunPython(rewrite_public_copies_without_metadata, migrations.RunPython.noop),
    ]
