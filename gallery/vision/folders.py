"""Saved index folders, replaced whole: a reader sees the old folder or the new one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def replace_folder(directory: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a fresh folder beside `directory`, then swap it in by renames."""
    directory = Path(directory)
    partial = directory.with_name(f".{directory.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    previous = directory.with_name(f".{directory.name}.{os.getpid()}.old")
    if directory.exists():
        directory.rename(previous)
    partial.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
