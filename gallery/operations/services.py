"""Backups and restores of a whole install: the database and every file it names.

A backup takes a consistent snapshot of the database first (SQLite's online backup API;
`pg_dump` of an exported snapshot on PostgreSQL), then copies exactly the files that
snapshot names: a file written afterwards belongs to rows the snapshot does not have, and
a file deleted meanwhile is listed as missing. A manifest (written last, so a half-written
backup has none) records every file's size and SHA-256, the dump's checksum, the
migrations, the search space and the time.

A restore checks everything before it touches anything: the manifest's paths (no `..`,
no absolute paths), every checksum, the database vendor, the migrations, and that the
install is empty (unless forced). The in-memory search index is then rebuilt from the
restored vectors on the next query: embeddings and reductions are database rows, so
nothing is embedded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import Storage, default_storage
from django.db import DatabaseError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from gallery.catalog.models import Image
from gallery.copyright.models import ProtectedWork
from gallery.errors import BackupRejected
from gallery.operations.models import BackupRecord
from gallery.search.models import CatalogState, Reduction
from gallery.storage import private_storage, withheld_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
FILES_DIR = "files"
DUMP_NAMES = {"sqlite": "database.sqlite3", "postgresql": "database.pgdump"}
# A manifest of a million files is ~150 MB of JSON; anything larger is not ours.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
CHUNK = 1024 * 1024
PG_TIMEOUT_SECONDS = 6 * 3600

Query = Callable[[str], list[tuple[Any, ...]]]


def storages_by_root() -> dict[str, Storage]:
    """The two file stores a backup covers, by the name the manifest gives them."""
    return {"media": default_storage, "private": private_storage}


@dataclass
class BackupReport:
    directory: Path
    taken_at: datetime
    files: int
    size: int
    missing: list[str] = field(default_factory=list)


@dataclass
class RestoreReport:
    directory: Path
    taken_at: str
    files: int
    size: int
    images: int
    protected_works: int


# ---------------------------------------------------------------- checksums and paths


def _copy_hashing(source: IO[bytes], target: IO[bytes]) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def file_sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def safe_relative_path(name: object) -> str:
    """`name` as a relative POSIX path that stays inside the folder it is joined to; a
    manifest naming anything else (absolute, `..`, backslashes, empty parts) is refused."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name or len(name) > 1000:
        raise BackupRejected(f"The manifest names an unsafe path: {name!r}.", code="unsafe_path", path=str(name))
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or ":" in path.parts[0] or any(p in ("", ".", "..") for p in name.split("/")):
        raise BackupRejected(f"The manifest names an unsafe path: {name!r}.", code="unsafe_path", path=name)
    return name


def _inside(base: Path, name: str) -> Path:
    """The file `name` under `base`, refused if it resolves outside it (a symbolic link)."""
    base = base.resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise BackupRejected(f"{name} leads outside the backup.", code="unsafe_path", path=name)
    return target


# ---------------------------------------------------------------- what a snapshot names


def _referenced_files(query: Query) -> Iterator[tuple[str, str, str]]:
    """(root, name, other_root_name) of every file the snapshot's rows name: originals and
    protected works in the private store; display copies and thumbnails in the public
    media, or withheld in the private store while their image is hidden."""
    image_table, work_table = Image._meta.db_table, ProtectedWork._meta.db_table
    for original, display, thumbnail, visibility in query(
        f"SELECT file, display, thumbnail, visibility FROM {image_table}"
    ):  # table names from the models
        if original:
            yield "private", original, ""
        for name in (display, thumbnail):
            if not name:
                continue
            if visibility == Image.Visibility.HIDDEN:
                yield "private", withheld_name(name), "media:" + name
            else:
                yield "media", name, "private:" + withheld_name(name)
    for (name,) in query(f"SELECT file FROM {work_table}"):
        if name:
            yield "private", name, ""


def _snapshot_facts(query: Query) -> dict[str, Any]:
    state_table, reduction_table = CatalogState._meta.db_table, Reduction._meta.db_table
    state = query(f"SELECT backbone, target_backbone FROM {state_table} ORDER BY id")
    active = query(f"SELECT backbone, version, dims, fitted_on FROM {reduction_table} WHERE is_active")
    return {
        "migrations": sorted([app, name] for app, name in query("SELECT app, name FROM django_migrations")),
        "search_space": {
            "backbone": state[0][0] if state else "",
            "target_backbone": state[0][1] if state else "",
            "reductions": [{"backbone": b, "version": v, "dims": d, "fitted_on": n} for b, v, d, n in active],
        },
        "images": query(f"SELECT COUNT(*) FROM {Image._meta.db_table}")[0][0],
        "protected_works": query(f"SELECT COUNT(*) FROM {ProtectedWork._meta.db_table}")[0][0],
    }


# ---------------------------------------------------------------- database snapshots


def pg_tool(name: str) -> str:
    """`pg_dump` / `pg_restore`: from IMAGESEARCH_PG_BIN, else the PostgreSQL bundled with
    the pgserver package, else the PATH."""
    candidates = []
    if settings.IMAGESEARCH.get("PG_BIN"):
        candidates.append(Path(settings.IMAGESEARCH["PG_BIN"]) / name)
    try:
        import pgserver  # type: ignore[import-untyped]

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BackupRejected(
        f"{name} was not found: install the PostgreSQL client tools or set IMAGESEARCH_PG_BIN.", code="tools_missing"
    )


def _pg_args_env() -> tuple[list[str], dict[str, str]]:
    db = connection.settings_dict
    args = ["--dbname", str(db["NAME"])]
    if db.get("HOST"):
        args += ["--host", str(db["HOST"])]
    if db.get("PORT"):
        args += ["--port", str(db["PORT"])]
    if db.get("USER"):
        args += ["--username", str(db["USER"])]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    return args, env


def _run_pg(args: list[str], env: dict[str, str], *, code: str) -> None:
    try:
        done = subprocess.run(args, env=env, capture_output=True, timeout=PG_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupRejected(f"{Path(args[0]).name} failed: {exc}", code=code) from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[-2000:]
        raise BackupRejected(f"{Path(args[0]).name} failed: {err}", code=code)


def _snapshot_sqlite(target: Path) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    connection.ensure_connection()
    if connection.in_atomic_block:  # its own uncommitted writes would lock the copy out
        raise BackupRejected("A backup cannot run inside a transaction.", code="in_transaction")
    dest = sqlite3.connect(target)
    try:
        connection.connection.backup(dest)  # a consistent copy while others keep writing
    finally:
        dest.close()
    snap = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:

        def query(sql: str) -> list[tuple[Any, ...]]:
            return snap.execute(sql).fetchall()

        return [*_referenced_files(query)], _snapshot_facts(query)
    finally:
        snap.close()


def _snapshot_postgresql(target: Path) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """pg_dump of a snapshot this transaction exports, and the file names read in the same
    snapshot: the dump and the file list agree exactly."""
    pg_dump = pg_tool("pg_dump")
    args, env = _pg_args_env()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SELECT pg_export_snapshot()")
        snapshot = cursor.fetchone()[0]

        def query(sql: str) -> list[tuple[Any, ...]]:
            cursor.execute(sql)
            return list(cursor.fetchall())

        refs = [*_referenced_files(query)]
        facts = _snapshot_facts(query)
        _run_pg([pg_dump, "--format=custom", f"--snapshot={snapshot}", "--file", str(target), *args], env, code="dump_failed")
    return refs, facts


# ---------------------------------------------------------------- backup


def _backbone_setting() -> str:
    return str(settings.IMAGESEARCH["BACKBONE"])


def app_version() -> str:
    try:
        with (Path(settings.BASE_DIR) / "pyproject.toml").open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def backup_create(*, directory: Path) -> BackupReport:
    """Back up the database and every file it names into `directory` (new or empty)."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupRejected(f"{directory} is not an empty folder: back up into a new one.", code="backup_dir_not_empty")
    vendor = connection.vendor
    if vendor not in DUMP_NAMES:
        raise BackupRejected(f"Backups support SQLite and PostgreSQL, not {vendor}.", code="wrong_database")
    directory.mkdir(parents=True, exist_ok=True)
    dump = directory / DUMP_NAMES[vendor]
    taken_at = timezone.now()
    if vendor == "sqlite":
        refs, facts = _snapshot_sqlite(dump)
    else:
        refs, facts = _snapshot_postgresql(dump)
    dump_size, dump_sha = file_sha256(dump)

    stores = storages_by_root()
    entries: list[dict[str, Any]] = []
    missing: list[str] = []
    seen: set[tuple[str, str]] = set()
    for root, name, other in refs:
        if (root, name) in seen:
            continue
        seen.add((root, name))
        located = _open_either(stores, root, name, other)
        if located is None:
            missing.append(f"{root}/{name}")
            continue
        found_root, found_name, source = located
        target = directory / FILES_DIR / found_root / found_name
        target.parent.mkdir(parents=True, exist_ok=True)
        with source, target.open("wb") as out:
            size, sha = _copy_hashing(source, out)
        entries.append({"root": found_root, "path": found_name, "size": size, "sha256": sha})

    manifest = {
        "format": FORMAT,
        "created_at": taken_at.isoformat(),
        "app_version": app_version(),
        "database": {"vendor": vendor, "file": dump.name, "size": dump_size, "sha256": dump_sha},
        "backbone_setting": _backbone_setting(),
        **facts,
        "files": entries,
        "missing": missing,
    }
    tmp = directory / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(directory / MANIFEST)  # last: a backup without its manifest is unfinished
    total = dump_size + sum(e["size"] for e in entries)
    BackupRecord.objects.create(
        directory=str(directory.resolve()), taken_at=taken_at, size=total, files=len(entries), missing=len(missing)
    )
    if missing:
        log.warning("backup %s: %d files named by the database were gone: %s", directory, len(missing), missing[:10])
    return BackupReport(directory, taken_at, len(entries), total, missing)


def _open_either(stores: dict[str, Storage], root: str, name: str, other: str) -> tuple[str, str, IO[bytes]] | None:
    """A file where the snapshot expects it or, while it is being moved (hidden or
    published meanwhile), in its other place."""
    places = [(root, name)]
    if other:
        other_root, other_name = other.split(":", 1)
        places.append((other_root, other_name))
    for place_root, place_name in places:
        try:
            safe_relative_path(place_name)  # a row naming a path out of the store is not followed
            return place_root, place_name, stores[place_root].open(place_name, "rb")
        except (OSError, BackupRejected, SuspiciousFileOperation):
            continue
    return None


# ---------------------------------------------------------------- restore


def _manifest_read(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupRejected(f"{directory} holds no {MANIFEST}: it is not a finished backup.", code="no_manifest")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BackupRejected(f"{MANIFEST} is too large to be a manifest.", code="bad_manifest")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackupRejected(f"{MANIFEST} is not valid JSON: {exc}", code="bad_manifest") from exc
    try:
        if manifest["format"] != FORMAT:
            raise BackupRejected(f"This backup's format {manifest['format']!r} is not {FORMAT}.", code="bad_manifest")
        database = manifest["database"]
        if database["vendor"] not in DUMP_NAMES or database["file"] != DUMP_NAMES[database["vendor"]]:
            raise BackupRejected("The manifest names an unknown database dump.", code="bad_manifest")
        int(database["size"]), str(database["sha256"])
        for entry in manifest["files"]:
            if entry["root"] not in ("media", "private"):
                raise BackupRejected(f"The manifest names an unknown file store {entry['root']!r}.", code="bad_manifest")
            safe_relative_path(entry["path"])
            int(entry["size"]), str(entry["sha256"])
        [(str(app), str(name)) for app, name in manifest["migrations"]]
    except (KeyError, TypeError, ValueError) as exc:  # BackupRejected (a RuntimeError) passes through
        raise BackupRejected(f"{MANIFEST} is incomplete or malformed ({exc!r}).", code="bad_manifest") from exc
    return manifest  # type: ignore[no-any-return]


def _verify(directory: Path, manifest: dict[str, Any]) -> None:
    checks = [(manifest["database"]["file"], manifest["database"])]
    checks += [(f"{FILES_DIR}/{e['root']}/{e['path']}", e) for e in manifest["files"]]
    for name, expected in checks:
        path = _inside(directory, name)
        if not path.is_file():
            raise BackupRejected(f"{name} is missing from the backup.", code="missing_file", path=name)
        size, sha = file_sha256(path)
        if size != int(expected["size"]) or sha != expected["sha256"]:
            raise BackupRejected(
                f"{name} does not match its checksum in the manifest: the backup is damaged or was altered.",
                code="checksum_mismatch",
                path=name,
            )


def backup_verify(*, directory: Path) -> dict[str, Any]:
    """The manifest of a backup whose every file matches it; refuses otherwise."""
    directory = Path(directory)
    manifest = _manifest_read(directory)
    _verify(directory, manifest)
    return manifest


def _storage_has_files(storage: Storage, path: str = "", depth: int = 0) -> bool:
    try:
        dirs, files = storage.listdir(path)
    except (FileNotFoundError, NotImplementedError):
        return False
    if files:
        return True
    return depth < 8 and any(_storage_has_files(storage, f"{path}{d}/", depth + 1) for d in dirs)


def install_is_empty() -> bool:
    """No images, no protected works and no stored files: a fresh install (its accounts
    do not count: the restore brings the backup's)."""
    try:
        if Image.objects.exists() or ProtectedWork.objects.exists():
            return False
    except DatabaseError:  # not migrated yet: nothing in it
        pass
    return not any(_storage_has_files(s) for s in storages_by_root().values())


def _known_migrations() -> set[tuple[str, str]]:
    return set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def _restore_sqlite(dump: Path) -> None:
    source = sqlite3.connect(f"file:{dump}?mode=ro", uri=True)
    try:
        connection.ensure_connection()
        if connection.in_atomic_block:
            raise BackupRejected("A restore cannot run inside a transaction.", code="in_transaction")
        source.backup(connection.connection)
    except sqlite3.Error as exc:
        raise BackupRejected(f"The database could not be restored: {exc}", code="restore_failed") from exc
    finally:
        source.close()


def _restore_postgresql(dump: Path) -> None:
    pg_restore = pg_tool("pg_restore")
    args, env = _pg_args_env()
    connection.close()
    command = [pg_restore, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction"]
    _run_pg([*command, "--exit-on-error", *args, str(dump)], env, code="restore_failed")


def backup_restore(*, directory: Path, force: bool = False) -> RestoreReport:
    """Restore the backup in `directory` into this install: every check first, then the
    database, then the files; the search index reloads from the restored vectors."""
    directory = Path(directory)
    manifest = backup_verify(directory=directory)
    vendor = manifest["database"]["vendor"]
    if vendor != connection.vendor:
        raise BackupRejected(
            f"This backup is of a {vendor} database; this install uses {connection.vendor}.", code="wrong_database"
        )
    unknown = {(a, n) for a, n in manifest["migrations"]} - _known_migrations()
    if unknown:
        names = ", ".join(f"{a}.{n}" for a, n in sorted(unknown)[:5])
        raise BackupRejected(
            f"The backup comes from a newer version of the product (migrations {names}): upgrade first.",
            code="unknown_migrations",
        )
    if not force and not install_is_empty():
        raise BackupRejected(
            "This install already holds images, protected works or files: restore into an empty install, "
            "or pass --force to replace them.",
            code="target_not_empty",
        )

    dump = _inside(directory, manifest["database"]["file"])
    if vendor == "sqlite":
        _restore_sqlite(dump)
    else:
        _restore_postgresql(dump)

    stores = storages_by_root()
    for entry in manifest["files"]:
        storage, name = stores[entry["root"]], entry["path"]
        if storage.exists(name):
            storage.delete(name)
        with _inside(directory, f"{FILES_DIR}/{entry['root']}/{name}").open("rb") as f:
            saved = storage.save(name, f)
        if saved != name:  # the storage renamed it: the rows would not find it
            raise BackupRejected(f"{name} was stored as {saved}.", code="restore_failed", path=name)

    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)  # a backup from an older version
    from gallery.copyright.selectors import copy_index
    from gallery.search import spacememo
    from gallery.search.index import catalog_index

    catalog_index.clear()  # both indexes reload from the restored rows on their next use
    spacememo.forget()
    copy_index.clear()
    size = int(manifest["database"]["size"]) + sum(int(e["size"]) for e in manifest["files"])
    BackupRecord.objects.create(
        kind=BackupRecord.Kind.RESTORE,
        directory=str(directory.resolve()),
        taken_at=datetime.fromisoformat(manifest["created_at"]),
        size=size,
        files=len(manifest["files"]),
        missing=len(manifest.get("missing", [])),
    )
    return RestoreReport(
        directory,
        manifest["created_at"],
        len(manifest["files"]),
        size,
        Image.objects.count(),
        ProtectedWork.objects.count(),
    )
