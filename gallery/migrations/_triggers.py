"""The catalog change log's SQLite triggers on the image table, shared by the migrations
that must re-create them after SQLite rebuilds the table (adding a column drops them)."""

SQLITE_IMAGE_TRIGGERS = [
    "DROP TRIGGER IF EXISTS gallery_change_image_update",
    "DROP TRIGGER IF EXISTS gallery_change_image_delete",
    """CREATE TRIGGER gallery_change_image_update AFTER UPDATE OF status, visibility ON gallery_image
       WHEN (OLD.status = 'ready') <> (NEW.status = 'ready') OR OLD.visibility <> NEW.visibility
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (NEW.id); END""",
    """CREATE TRIGGER gallery_change_image_delete AFTER DELETE ON gallery_image
       BEGIN INSERT INTO gallery_catalogchange (image_id) VALUES (OLD.id); END""",
]
