"""Scale: pgvector on PostgreSQL, and the catalog change log that keeps every process's
in-memory index consistent. Applies on SQLite too: vendor-specific steps check the vendor."""

import django.db.models.functions.datetime
from django.contrib.postgres.operations import CreateExtension
from django.db import migrations, models

import gallery.vector_field

SQLITE_TRIGGERS = [
    """CREATE TRIGGER gallery_change_image_update AFTER UPDATE OF status, visibility ON gallery_image
       WHEN (OLD.status = 'ready') <> (NEW.status = 'ready') OR OLD.visibility <> NEW.visibility
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (NEW.id); END""",
    """CREATE TRIGGER gallery_change_image_delete AFTER DELETE ON gallery_image
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (OLD.id); END""",
    """CREATE TRIGGER gallery_change_reduced_insert AFTER INSERT ON gallery_reducedvector
       WHEN EXISTS (SELECT 1 FROM gallery_reduction WHERE id = NEW.reduction_id AND is_active)
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (NEW.image_id); END""",
    """CREATE TRIGGER gallery_change_reduced_update AFTER UPDATE OF vector ON gallery_reducedvector
       WHEN EXISTS (SELECT 1 FROM gallery_reduction WHERE id = NEW.reduction_id AND is_active)
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (NEW.image_id); END""",
    """CREATE TRIGGER gallery_change_reduced_delete AFTER DELETE ON gallery_reducedvector
       WHEN EXISTS (SELECT 1 FROM gallery_reduction WHERE id = OLD.reduction_id AND is_active)
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (OLD.image_id); END""",
    """CREATE TRIGGER gallery_change_embedding_insert AFTER INSERT ON gallery_embedding
       WHEN NOT EXISTS (SELECT 1 FROM gallery_reduction WHERE backbone = NEW.backbone AND is_active)
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (NEW.image_id); END""",
    """CREATE TRIGGER gallery_change_embedding_update AFTER UPDATE OF vector ON gallery_embedding
       WHEN NOT EXISTS (SELECT 1 FROM gallery_reduction WHERE backbone = NEW.backbone AND is_active)
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (NEW.image_id); END""",
    """CREATE TRIGGER gallery_change_embedding_delete AFTER DELETE ON gallery_embedding
       WHEN NOT EXISTS (SELECT 1 FROM gallery_reduction WHERE backbone = OLD.backbone AND is_active)
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (OLD.image_id); END""",
]

POSTGRES_TRIGGERS = [
    """CREATE FUNCTION gallery_log_image_change() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF TG_OP = 'DELETE' THEN
           INSERT INTO gallery_catalogchange (image_id) VALUES (OLD.id);
         ELSE
           INSERT INTO gallery_catalogchange (image_id) VALUES (NEW.id);
         END IF;
         RETURN NULL;
       END $$""",
    """CREATE FUNCTION gallery_log_reduced_change() RETURNS trigger LANGUAGE plpgsql AS $$
       DECLARE row gallery_reducedvector;
       BEGIN
         IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
         IF EXISTS (SELECT 1 FROM gallery_reduction WHERE id = row.reduction_id AND is_active) THEN
           INSERT INTO gallery_catalogchange (image_id) VALUES (row.image_id);
         END IF;
         RETURN NULL;
       END $$""",
    """CREATE FUNCTION gallery_log_embedding_change() RETURNS trigger LANGUAGE plpgsql AS $$
       DECLARE row gallery_embedding;
       BEGIN
         IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
         IF NOT EXISTS (SELECT 1 FROM gallery_reduction WHERE backbone = row.backbone AND is_active) THEN
           INSERT INTO gallery_catalogchange (image_id) VALUES (row.image_id);
         END IF;
         RETURN NULL;
       END $$""",
    """CREATE TRIGGER gallery_change_image_update AFTER UPDATE OF status, visibility ON gallery_image FOR EACH ROW
       WHEN ((OLD.status = 'ready') IS DISTINCT FROM (NEW.status = 'ready') OR OLD.visibility IS DISTINCT FROM NEW.visibility)
       EXECUTE FUNCTION gallery_log_image_change()""",
    """CREATE TRIGGER gallery_change_image_delete AFTER DELETE ON gallery_image FOR EACH ROW
       EXECUTE FUNCTION gallery_log_image_change()""",
    """CREATE TRIGGER gallery_change_reduced AFTER INSERT OR DELETE OR UPDATE OF vector ON gallery_reducedvector
       FOR EACH ROW EXECUTE FUNCTION gallery_log_reduced_change()""",
    """CREATE TRIGGER gallery_change_embedding AFTER INSERT OR DELETE OR UPDATE OF vector ON gallery_embedding
       FOR EACH ROW EXECUTE FUNCTION gallery_log_embedding_change()""",
]


def create_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    statements = {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRES_TRIGGERS}.get(vendor)
    if statements is None:
        raise RuntimeError(f"the catalog change log has no triggers for {vendor}; use SQLite or PostgreSQL")
    for sql in statements:
        schema_editor.execute(sql)


def drop_triggers(apps, schema_editor):
    names = ["image_update", "image_delete", "reduced_insert", "reduced_update", "reduced_delete", "reduced",
             "embedding_insert", "embedding_update", "embedding_delete", "embedding"]
    on = {"image": "gallery_image", "reduced": "gallery_reducedvector", "embedding": "gallery_embedding"}
    postgres = schema_editor.connection.vendor == "postgresql"
    for name in names:
        table = on[name.split("_")[0]]
        schema_editor.execute(f"DROP TRIGGER IF EXISTS gallery_change_{name}" + (f" ON {table}" if postgres else ""))
    if postgres:
        for fn in ("image", "reduced", "embedding"):
            schema_editor.execute(f"DROP FUNCTION IF EXISTS gallery_log_{fn}_change()")


def vectors_to_pgvector(apps, schema_editor):
    """On PostgreSQL, turn the reduced vectors' bytea column into a pgvector column."""
    if schema_editor.connection.vendor != "postgresql":
        return
    import numpy as np

    from gallery.vector_field import pgvector_literal

    execute = schema_editor.execute
    execute("ALTER TABLE gallery_reducedvector ADD COLUMN vector_pg vector")
    with schema_editor.connection.cursor() as cur:
        cur.execute("SELECT id, vector FROM gallery_reducedvector")
        rows = cur.fetchall()
        for pk, blob in rows:
            cur.execute(
                "UPDATE gallery_reducedvector SET vector_pg = %s WHERE id = %s",
                [pgvector_literal(np.frombuffer(bytes(blob), dtype=np.float32)), pk],
            )
    execute("ALTER TABLE gallery_reducedvector DROP COLUMN vector")
    execute("ALTER TABLE gallery_reducedvector RENAME COLUMN vector_pg TO vector")
    execute("ALTER TABLE gallery_reducedvector ALTER COLUMN vector SET NOT NULL")


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0004_private_originals_display_copies'),
    ]

    operations = [
        CreateExtension('vector'),
        migrations.CreateModel(
            name='CatalogChange',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('image_id', models.BigIntegerField()),
                ('at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), db_index=True)),
            ],
            options={
                'indexes': [models.Index(fields=['image_id'], name='gallery_cat_image_i_1dfd12_idx')],
            },
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='reducedvector',
                    name='vector',
                    field=gallery.vector_field.VectorBytesField(),
                ),
            ],
            database_operations=[migrations.RunPython(vectors_to_pgvector, migrations.RunPython.noop)],
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
