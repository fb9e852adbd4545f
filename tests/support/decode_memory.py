"""Peak memory of the product's decode path, measured in a fresh child process.

The child sets Django up, reads the files and decodes one small photo (so codecs and
plugins are loaded); each measurement then runs in a fork of it, which resets the
kernel's peak-RSS mark (/proc/self/clear_refs) and runs the path an upload takes:
decode → display copy → thumbnail → the backbone's preprocessing. The figure is VmHWM
(peak RSS) minus VmRSS at the reset, so neither the test runner's own memory nor
another measurement pollutes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import gc, io, json, os, re, sys, threading, time
import django
django.setup()
from gallery.catalog import pipeline
from gallery.vision.preprocess import ImageDecodeError, display_copy_bytes, prepare
from PIL import Image as PILImage
from gallery.catalog import services as catalog_services

def status():
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}

datas = [open(p, "rb").read() for p in sys.argv[1:]]
warm = io.BytesIO()
PILImage.new("RGB", (64, 48), (200, 30, 30)).save(warm, "JPEG")
for fmt in ("PNG", "WEBP", "GIF", "BMP", "TIFF"):
    PILImage.new("RGB", (8, 8)).save(io.BytesIO(), fmt)
small = pipeline.decode(warm.getvalue()).image
display_copy_bytes(small)
catalog_services._thumbnail_bytes(small)
prepare(small, size=224, resize_short=256)

def run(i, outcomes):
    try:
        decoded = pipeline.decode(datas[i])
        display_copy_bytes(decoded.image)
        catalog_services._thumbnail_bytes(decoded.image)
        prepare(decoded.image, size=224, resize_short=256)
        outcomes[i] = {"ok": True, "size": [decoded.width, decoded.height], "format": decoded.format}
    except ImageDecodeError as exc:
        outcomes[i] = {"ok": False, "code": exc.code, "message": str(exc)}

def measure(indices):
    outcomes = {}
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    base = status()["VmRSS"]
    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i, outcomes)) for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    peak = status()["VmHWM"]
    gc.collect()
    after = status()["VmRSS"]
    return {"peak": peak - base, "kept": after - base, "seconds": seconds, "outcomes": [outcomes[i] for i in indices]}

def forked(indices):
    # Each measurement in a fresh fork of this warmed-up process: memory a previous
    # decode freed but the allocator kept cannot hide part of the next one's growth.
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        with os.fdopen(writer, "w") as out:
            out.write(json.dumps(measure(indices)))
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as source:
        text = source.read()
    os.waitpid(pid, 0)
    return json.loads(text)

if os.environ["DECODE_MEMORY_HOW"] == "together":
    results = [forked(list(range(len(datas))))]
else:
    results = [forked([i]) for i in range(len(datas))]
print("DECODE-MEMORY " + json.dumps(results))
"""


@dataclass(frozen=True)
class DecodeMemory:
    peak_mb: float  # peak RSS growth over the baseline while decoding
    kept_mb: float  # RSS growth still held once every decode is over
    seconds: float
    outcomes: list[dict[str, object]]


def measure_decodes(files: list[bytes], *, env: dict[str, str] | None = None, timeout: float = 600) -> list[DecodeMemory]:
    """Decode `files` one after the other in one child process, each with its own peak."""
    return _measure(files, "each", env=env, timeout=timeout)


def measure_decode_together(files: list[bytes], *, env: dict[str, str] | None = None, timeout: float = 600) -> DecodeMemory:
    """Decode `files` at the same time (one thread each) in a child process: one peak."""
    return _measure(files, "together", env=env, timeout=timeout)[0]


def _measure(files: list[bytes], how: str, *, env: dict[str, str] | None, timeout: float) -> list[DecodeMemory]:
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as tmp:
        paths = []
        for i, data in enumerate(files):
            path = Path(tmp) / f"upload-{i}"
            path.write_bytes(data)
            paths.append(str(path))
        child_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DECODE_MEMORY_HOW": how, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, *paths], cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=timeout
        )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("DECODE-MEMORY ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"decode measurement failed ({proc.returncode}): {proc.stderr[-3000:]}")
    results = json.loads(line.removeprefix("DECODE-MEMORY "))
    return [DecodeMemory(r["peak"] / 2**20, r["kept"] / 2**20, r["seconds"], r["outcomes"]) for r in results]
