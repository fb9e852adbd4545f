import gallery.storage
from django.db import migrations, models


def move_protected_originals(apps, schema_editor):
    """Protected works registered before this change sit in the public media folder,
    where anyone who guesses the name could fetch them: move them to private storage."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from gallery.storage import private_storage

    ProtectedWork = apps.get_model("gallery", "ProtectedWork")
    for work in ProtectedWork.objects.iterator():
        name = work.file.name
        if name and default_storage.exists(name) and not private_storage.exists(name):
            with default_storage.open(name, "rb") as f:
                saved = private_storage.save(name, ContentFile(f.read()))
            if saved != name:
                work.file.name = saved
                work.save(update_fields=["file"])
            default_storage.delete(name)


class Migration(migrations.Migration):
    dependencies = [
        ("gallery", "0007_queued_at"),
    ]

    operations = [
        migrations.AlterField(
            model_name="protectedwork",
            name="file",
            field=models.FileField(max_length=255, storage=gallery.storage.get_private_storage, upload_to="protected/"),
        ),
        migrations.RunPython(move_protected_originals, migrations.RunPython.noop),
    ]
