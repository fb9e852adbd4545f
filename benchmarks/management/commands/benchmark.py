"""Speed and memory of the product against named references, measured in one run.

Runs in a child process on a throw-away catalog (its own SQLite database, media and
broker under a temporary directory), so the real catalog is never touched. Sections:

- ingest: import throughput end to end ÷ the bare backbone's batched forward throughput
- search: top-10 latency at 10k/100k/1M vectors, the product's index vs faiss IndexFlatIP
- memory: resident size of the index per 1M vectors
- http: search-by-upload through the real server on a 10k-image catalog
- latency: upload → searchable with one idle worker
- decode: peak memory of one decode (decode → display copy → thumbnail → preprocessing)
  per kind of input, decompression bombs included, and of four at once
- labels: batched forward throughput with the labels (one pass: descriptor and class
  probabilities) ÷ without them, alternating rounds on the same batches
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from gallery.search import services as search_services

SECTIONS = ("ingest", "search", "memory", "http", "latency", "decode", "labels", "query")
TARGETS = {
    "ingest_ratio": ("≥", 0.85),
    # Labels come from the embedding's own forward pass: throughput unchanged within noise.
    "labels_throughput_ratio": ("≥", 0.95),
    # ONNX Runtime runs the query path only if it gives TensorFlow's vectors.
    "query_onnx_max_difference": ("≤", 1e-4),
    "search_p50_ms_100k": ("≤", 5.0),
    "search_vs_faiss_100k": ("≤", 1.5),
    "http_p50_ms": ("≤", 150.0),
    "http_p99_ms": ("≤", 400.0),
    "upload_to_searchable_p50_s": ("≤", 2.0),
    "index_mb_per_1m": ("≤", 512.0),
    "decode_peak_mb_max": ("≤", float(settings.IMAGESEARCH["DECODE_MEMORY_MB"])),
    "decode_parallel_peak_mb": (
        "≤",
        float(settings.IMAGESEARCH["DECODE_MEMORY_MB"] * settings.IMAGESEARCH["DECODE_CONCURRENCY"]),
    ),
}

# The import's stages run by its prefetch threads, while the main thread embeds.
INGEST_PREFETCH_STAGES = ("read", "decode", "display copy", "thumbnail", "network input", "file writes")


def _phone_sized(path: Path) -> bytes:
    """A photo as a phone takes it: 4032×3024, with sensor-like noise (a smooth upscale
    would compress to a fraction of a real photo's bytes), JPEG quality 90 (~4 MB)."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        big = np.asarray(im.convert("RGB").resize((4032, 3024), PILImage.Resampling.LANCZOS), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-12, 13, size=big.shape, dtype=np.int16)
    out = io.BytesIO()
    PILImage.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _dataset_default() -> Path:
    return Path(settings.BASE_DIR).parent / "shared" / "datasets" / "leeds-butterfly"


class Command(BaseCommand):
    help = "Print speed and memory figures with their targets and ratios (use --quick for a run under 5 minutes)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--quick", action="store_true", help="smaller samples; every figure still printed")
        parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
        parser.add_argument("--dataset", type=Path, default=None, help="folder of photos (default: the development set)")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--child", action="store_true", help="run inside the throw-away catalog (internal)")

    def handle(self, *args: Any, **opts: Any) -> None:
        sections = [s.strip() for s in opts["sections"].split(",") if s.strip()]
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise CommandError(f"unknown sections: {', '.join(sorted(unknown))}")
        dataset = opts["dataset"] or _dataset_default()
        if not dataset.is_dir():
            raise CommandError(f"{dataset} is not a folder of photos")
        if not opts["child"]:
            self._run_child(sections, dataset, opts)
            return
        call_command("migrate", interactive=False, verbosity=0)
        from gallery.vision.datasets import find_images

        photos = find_images(dataset)
        results: dict[str, Any] = {}
        for section in sections:
            started = time.perf_counter()
            results.update(getattr(self, f"_bench_{section}")(photos, quick=opts["quick"]))
            results[f"{section}_seconds"] = time.perf_counter() - started
        self.stdout.write("BENCHMARK-JSON " + json.dumps(results, default=float))

    # ------------------------------------------------------------ orchestration

    def _run_child(self, sections: list[str], dataset: Path, opts: dict[str, Any]) -> None:
        var = Path(tempfile.mkdtemp(prefix="imagesearch-bench-"))
        env = {
            **os.environ,
            "IMAGESEARCH_VAR_DIR": str(var),
            "DJANGO_MEDIA_ROOT": str(var / "media"),
            "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "imagesearch.settings",
        }
        for key in ("CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER"):
            env.pop(key, None)
        cmd = [sys.executable, "manage.py", "benchmark", "--child", "--sections", ",".join(sections), "--dataset", str(dataset)]
        if opts["quick"]:
            cmd.append("--quick")
        started = time.perf_counter()
        # The child's broker, on the socket its settings name, as the product's start script
        # runs one: an import queues its follow-up jobs there (an unreachable broker would
        # cost each import its connection retries instead).
        from imagesearch.broker import start_redis

        broker = start_redis(socket=var / "redis" / "redis.sock", directory=var / "redis", persist=False)
        try:
            proc = subprocess.run(cmd, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True)
        finally:
            broker.terminate()
            broker.wait(timeout=20)
            shutil.rmtree(var, ignore_errors=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCHMARK-JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise CommandError(f"benchmark failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        results = json.loads(line.removeprefix("BENCHMARK-JSON "))
        results["total_seconds"] = time.perf_counter() - started
        if opts["json"]:
            self.stdout.write(json.dumps(results, indent=2))
        else:
            self._print(results)

    def _print(self, r: dict[str, Any]) -> None:
        out = self.stdout.write

        def target(key: str) -> str:
            if key not in TARGETS or key not in r:
                return ""
            op, bound = TARGETS[key]
            ok = r[key] >= bound if op == "≥" else r[key] <= bound
            return f"  (target {op} {bound:g}: {'met' if ok else 'MISSED'})"

        if "ingest_ratio" in r:
            out(f"ingest: {r['ingest_images']} photos; import {r['ingest_import_ips']:.1f} img/s end to end vs bare backbone "
                f"{r['ingest_forward_ips']:.1f} img/s batched forward on TensorFlow (the reference: the mean of "
                f"{r['ingest_forward_ips_before']:.1f} before the import and {r['ingest_forward_ips_after']:.1f} after) → ratio "
                f"{r['ingest_ratio']:.2f}{target('ingest_ratio')}; the import's forward pass runs on {r['ingest_runtime']}, "
                f"alone {r['ingest_runtime_ips']:.1f} img/s → import ÷ that {r['ingest_import_ips'] / r['ingest_runtime_ips']:.2f}")  # fmt: skip
        if "ingest_stage_ms" in r:
            self._print_ingest_stages(r)
        if "search_sizes" in r:
            out(f"search ({r['search_dim']}-d vectors from a Gaussian mixture fitted to real PCA vectors, top-10):")
            for n in r["search_sizes"]:
                key = f"{n // 1000}k"
                line = (f"  {key:>5}: index p50 {r[f'search_p50_ms_{key}']:.2f} ms / p99 {r[f'search_p99_ms_{key}']:.2f} ms; "
                        f"faiss IndexFlatIP p50 {r[f'faiss_p50_ms_{key}']:.2f} ms / p99 {r[f'faiss_p99_ms_{key}']:.2f} ms; "
                        f"ratio {r[f'search_vs_faiss_{key}']:.2f}; with re-ranking p50 {r[f'rerank_p50_ms_{key}']:.2f} ms")  # fmt: skip
                if key == "100k":
                    line += target("search_p50_ms_100k") + target("search_vs_faiss_100k")
                out(line)
        if "index_mb_per_1m" in r:
            out(f"memory: index {r['index_mb_per_1m']:.0f} MB per 1M {r['search_dim']}-d vectors "
                f"(process RSS grew {r['index_rss_mb_per_1m']:.0f} MB){target('index_mb_per_1m')}")  # fmt: skip
        if "http_p50_ms" in r:
            out(f"http: search-by-upload on a {r['http_catalog']}-image catalog, {r['http_requests']} requests: "
                f"p50 {r['http_p50_ms']:.0f} ms{target('http_p50_ms')}, p99 {r['http_p99_ms']:.0f} ms{target('http_p99_ms')}")  # fmt: skip
            out(f"  the same queries as 12-megapixel phone photos (4032×3024 JPEG), {r['http_phone_requests']} requests: "
                f"p50 {r['http_phone_p50_ms']:.0f} ms, p99 {r['http_phone_p99_ms']:.0f} ms (upload and decode included)")  # fmt: skip
        if "upload_to_searchable_p50_s" in r:
            out(f"upload → searchable, one idle worker, {r['latency_uploads']} uploads: p50 {r['upload_to_searchable_p50_s']:.2f} s, "
                f"max {r['upload_to_searchable_max_s']:.2f} s{target('upload_to_searchable_p50_s')}")  # fmt: skip
        if "decode_inputs" in r:
            out(f"decode: peak RSS growth of one upload's decode → display copy → thumbnail → preprocessing "
                f"(budget {r['decode_budget_mb']} MB, {r['decode_slots']} decode slots per process):")  # fmt: skip
            for row in r["decode_inputs"]:
                out(f"  {row['kind']:<44} {row['outcome']:<33} peak {row['peak_mb']:6.0f} MB  {row['seconds']:5.2f} s")
            out(f"  largest peak {r['decode_peak_mb_max']:.0f} MB{target('decode_peak_mb_max')}")
            out(f"  four 7000² 16-bit PNGs at once: peak {r['decode_parallel_peak_mb']:.0f} MB with {r['decode_slots']} slots"
                f"{target('decode_parallel_peak_mb')}, {r['decode_parallel_unbounded_mb']:.0f} MB with 4; "
                f"still held afterwards {r['decode_parallel_kept_mb']:.0f} MB")  # fmt: skip
        if "labels_throughput_ratio" in r:
            out(f"labels: {r['labels_images']} photos × {r['labels_rounds']} rounds; embedding alone {r['labels_plain_ips']:.1f} img/s, "
                f"embedding with labels {r['labels_ips']:.1f} img/s → ratio {r['labels_throughput_ratio']:.3f}"
                f"{target('labels_throughput_ratio')} (round-to-round spread {r['labels_noise']:.3f})")  # fmt: skip
        if "query_tf_ms_1" in r:
            onnx = "not available" if r.get("query_onnx_ms_1") is None else ""
            out(f"query path (one web process, {r['query_photos']} photos): TensorFlow "
                f"{r['query_tf_ms_1']:.1f} ms a lone photo, {r['query_tf_ms_16']:.1f} ms/photo in 16s; ONNX Runtime "
                + (onnx or f"{r['query_onnx_ms_1']:.1f} ms a lone photo, {r['query_onnx_ms_16']:.1f} ms/photo in 16s "
                   f"→ {r['query_tf_ms_1'] / r['query_onnx_ms_1']:.2f}× faster alone; largest difference "
                   f"{r['query_onnx_max_difference']:.1e}{target('query_onnx_max_difference')}; "
                   f"the product runs queries on {r['query_runtime']}"))  # fmt: skip
        out(f"total {r['total_seconds']:.0f} s")

    def _print_ingest_stages(self, r: dict[str, Any]) -> None:
        """Where each millisecond of the import goes, per photo: the prefetch threads' stages
        overlap the main thread's forward pass, so only the main thread's add up to the wall time."""
        stages: dict[str, float] = r["ingest_stage_ms"]
        wall, forward = 1000 / r["ingest_import_ips"], 1000 / r["ingest_forward_ips"]
        self.stdout.write(f"  ms per photo: end to end {wall:.1f}, bare batched forward {forward:.1f}")
        import_cpu, forward_cpu = wall * r["ingest_import_cores"], forward * r["ingest_forward_cores"]
        self.stdout.write(
            f"  CPU cores busy (CPU s per wall s, of {os.cpu_count()}): import {r['ingest_import_cores']:.2f}, "
            f"bare forward {r['ingest_forward_cores']:.2f}; CPU ms per photo: import {import_cpu:.1f}, bare forward "
            f"{forward_cpu:.1f} (their ratio, {forward_cpu / import_cpu:.2f}, is the ceiling once the cores are full)"
        )
        ahead = [s for s in INGEST_PREFETCH_STAGES if s in stages]
        main = [s for s in stages if s not in INGEST_PREFETCH_STAGES]
        self.stdout.write(f"  prefetch threads (overlapping the main thread), {sum(stages[s] for s in ahead):.1f} ms in all:")
        for name in ahead:
            self.stdout.write(f"    {name:<40} {stages[name]:6.1f}")
        self.stdout.write("  main thread:")
        for name in sorted(main, key=lambda s: -stages[s]):
            self.stdout.write(f"    {name:<40} {stages[name]:6.1f}")
        self.stdout.write(f"    {'the rest (checksums, bookkeeping)':<40} {wall - sum(stages[s] for s in main):6.1f}")

    # ------------------------------------------------------------ sections

    def _bench_ingest(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        """Import throughput through the real services vs the network alone on the same photos."""
        from gallery.catalog import pipeline
        from gallery.management.commands.import_images import Command as ImportCommand
        from gallery.vision.datasets import IMAGE_SUFFIXES

        n = 96 if quick else 320
        chosen = photos[:n]
        backbone = pipeline.current_backbone()
        options = pipeline.preprocess_options()
        batch = settings.IMAGESEARCH["BATCH_SIZE"]
        arrays = np.stack([backbone.preprocess(pipeline.decode(p.read_bytes()).image, options) for p in chosen])

        def bare(forward: Any) -> tuple[float, float]:
            """Photos per second of `forward` in the import's batches, and the cores it kept busy."""
            forward(arrays[:batch])  # warm
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, len(arrays), batch):
                forward(arrays[i : i + batch])
            ips = len(arrays) / (time.perf_counter() - t0)
            return ips, (time.process_time() - c0) * ips / len(arrays)

        # The reference: TensorFlow's batched forward pass, whatever runtime the import uses.
        # Timed before the import and again after it (this machine's speed drifts by 10-20%
        # between minutes), and their mean is what the import is compared with.
        before_ips, before_cores = bare(backbone.tensorflow_embed_arrays)
        # What the import runs (vectors and labels in one pass, on EMBED_RUNTIME), alone.
        pipeline.embedding_backbone(backbone)
        runtime_ips, _ = bare(backbone.embed_and_label_arrays)
        folder = Path(tempfile.mkdtemp(prefix="ingest-"))
        try:
            for p in chosen:
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    os.symlink(p.resolve(), folder / p.name)
            conf = settings.IMAGESEARCH
            conf_before = dict(conf)
            conf["PCA_MIN_IMAGES"] = 10**9  # steady-state ingest; a PCA refit is a separate, rare job
            try:
                with open(os.devnull, "w") as devnull:
                    importer = ImportCommand(stdout=devnull, stderr=devnull)
                    t0, c0 = time.perf_counter(), time.process_time()
                    call_command(importer, str(folder), "--no-progress")
                    import_ips = len(chosen) / (time.perf_counter() - t0)
                    import_cores = (time.process_time() - c0) * import_ips / len(chosen)
            finally:
                conf.clear()
                conf.update(conf_before)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        after_ips, after_cores = bare(backbone.tensorflow_embed_arrays)
        forward_ips, forward_cores = (before_ips + after_ips) / 2, (before_cores + after_cores) / 2
        from gallery.models import Image

        ready = Image.objects.filter(status=Image.Status.READY).count()
        if ready != len(chosen):
            raise CommandError(f"ingest left {len(chosen) - ready} photos not ready")
        return {
            "ingest_images": len(chosen),
            "ingest_forward_ips": forward_ips,
            "ingest_forward_ips_before": before_ips,
            "ingest_forward_ips_after": after_ips,
            "ingest_import_ips": import_ips,
            "ingest_ratio": import_ips / forward_ips,
            "ingest_runtime": backbone.forward_runtime,
            "ingest_runtime_ips": runtime_ips,
            # CPU seconds per second of wall time, all threads: how many cores each one got.
            "ingest_forward_cores": forward_cores,
            "ingest_import_cores": import_cores,
            "ingest_stage_ms": {name: 1000 * s / len(chosen) for name, s in importer.clock.seconds.items()},
        }

    def _bench_query(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        """The query path's forward pass on TensorFlow and on ONNX Runtime: ms per photo
        alone and in batches of 16 (median of rounds), and the largest vector difference."""
        from gallery.catalog import pipeline
        from gallery.vision import onnx_query

        backbone = pipeline.current_backbone()
        options = pipeline.preprocess_options()
        n, rounds = (16, 5) if quick else (64, 15)
        arrays = np.stack([backbone.preprocess(pipeline.decode(p.read_bytes()).image, options) for p in photos[:n]])

        def timed(forward: Any) -> tuple[float, float]:
            forward(arrays[:1])
            forward(arrays[:16])
            alone, grouped = [], []
            for i in range(rounds):
                t = time.perf_counter()
                forward(arrays[i % len(arrays) : i % len(arrays) + 1])
                alone.append(time.perf_counter() - t)
                t = time.perf_counter()
                forward(arrays[:16])
                grouped.append((time.perf_counter() - t) / len(arrays[:16]))
            return 1000 * float(np.median(alone)), 1000 * float(np.median(grouped))

        result: dict[str, Any] = {"query_photos": len(arrays)}
        result["query_tf_ms_1"], result["query_tf_ms_16"] = timed(backbone.embed_arrays)
        embed = onnx_query.build(backbone)
        if embed is None:
            result["query_onnx_ms_1"] = None
        else:
            result["query_onnx_ms_1"], result["query_onnx_ms_16"] = timed(embed)
            result["query_onnx_max_difference"] = float(np.abs(embed(arrays) - backbone.embed_arrays(arrays)).max())
        result["query_runtime"] = pipeline.query_runtime(backbone)
        return result

    def _bench_labels(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        """Forward throughput with and without the labels, best of alternating rounds."""
        from gallery.catalog import pipeline

        backbone = pipeline.current_backbone()
        if not backbone.labels_available:
            return {}
        n, rounds = (64, 3) if quick else (192, 5)
        options = pipeline.preprocess_options()
        batch = settings.IMAGESEARCH["BATCH_SIZE"]
        arrays = np.stack([backbone.preprocess(pipeline.decode(p.read_bytes()).image, options) for p in photos[:n]])
        backbone.embed_arrays(arrays[:batch])  # warm both graphs
        backbone.embed_and_label_arrays(arrays[:batch])
        plain: list[float] = []
        labelled: list[float] = []
        for _ in range(rounds):
            for run, into in ((backbone.embed_arrays, plain), (backbone.embed_and_label_arrays, labelled)):
                t0 = time.perf_counter()
                for i in range(0, len(arrays), batch):
                    run(arrays[i : i + batch])
                into.append(len(arrays) / (time.perf_counter() - t0))
        return {
            "labels_images": len(arrays),
            "labels_rounds": rounds,
            "labels_plain_ips": max(plain),
            "labels_ips": max(labelled),
            "labels_throughput_ratio": max(labelled) / max(plain),
            "labels_noise": (max(plain) - min(plain)) / max(plain),
        }

    def _realistic_vectors(self, photos: list[Path], n: int, *, quick: bool) -> tuple[np.ndarray, np.ndarray]:
        """Samples from a Gaussian mixture fitted to real PCA-100 vectors of the photos."""
        from sklearn.mixture import GaussianMixture

        from gallery.catalog import pipeline
        from gallery.vision.reduction import fit_pca

        sample = photos[: 300 if quick else 832]
        images = [pipeline.decode(p.read_bytes()).image for p in sample]
        x = pipeline.embed_images(images)
        dims = min(settings.IMAGESEARCH["PCA_DIMS"], len(x) - 1)
        z = fit_pca(x, dims=dims).transform(x)
        gmm = GaussianMixture(n_components=16, covariance_type="diag", random_state=0).fit(z)
        db, _ = gmm.sample(n)
        queries, _ = gmm.sample(500)
        rng = np.random.default_rng(0)
        return db[rng.permutation(n)].astype(np.float32), queries.astype(np.float32)

    def _bench_search(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        import faiss

        from gallery.vision.index import Expansion, VectorIndex, l2_rows

        sizes = [10_000, 100_000, 1_000_000]
        db, queries = self._realistic_vectors(photos, sizes[-1], quick=quick)
        self._search_vectors = db  # reused by the memory section
        n_q = 100 if quick else 300
        conf = settings.IMAGESEARCH
        out: dict[str, Any] = {"search_sizes": sizes, "search_dim": db.shape[1]}
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        for n in sizes:
            key = f"{n // 1000}k"
            x = db[:n]
            index = VectorIndex(x.shape[1])
            index.add(np.arange(n), x)
            qs = queries[:n_q]
            index.search(qs[0], k=10)
            lat = []
            for q in qs:
                t0 = time.perf_counter()
                index.search(q, k=10, metric="cosine")
                lat.append(1000 * (time.perf_counter() - t0))
            flat = faiss.IndexFlatIP(x.shape[1])
            flat.add(l2_rows(x))
            qn = l2_rows(qs)
            flat.search(qn[:1], 10)
            flat_lat = []
            for q in qn:
                t0 = time.perf_counter()
                flat.search(q[None], 10)
                flat_lat.append(1000 * (time.perf_counter() - t0))
            # the product's cosine default: DBA where the catalog is small enough, plus query expansion
            dba = conf["DBA_K"] if (n <= 10_000 or not quick) and n <= conf["DBA_MAX_VECTORS"] else 0
            reranked = VectorIndex(x.shape[1], expansion=Expansion(dba_k=dba, qe_k=conf["QE_K"], alpha=conf["QE_ALPHA"]))
            reranked.add(np.arange(n), x)
            rr = []
            for q in qs[:50]:
                t0 = time.perf_counter()
                reranked.search(q, k=10)
                rr.append(1000 * (time.perf_counter() - t0))
            out.update({
                f"search_p50_ms_{key}": _pct(lat, 50),
                f"search_p99_ms_{key}": _pct(lat, 99),
                f"faiss_p50_ms_{key}": _pct(flat_lat, 50),
                f"faiss_p99_ms_{key}": _pct(flat_lat, 99),
                f"search_vs_faiss_{key}": _pct(lat, 50) / _pct(flat_lat, 50),
                f"rerank_p50_ms_{key}": _pct(rr, 50),
                f"rerank_dba_{key}": bool(dba),
            })  # fmt: skip
            del flat, index, reranked
        return out

    def _bench_memory(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        import gc

        import psutil

        from gallery.vision.index import VectorIndex

        x = getattr(self, "_search_vectors", None)
        if x is None:
            x, _ = self._realistic_vectors(photos, 1_000_000, quick=quick)
        gc.collect()
        before = psutil.Process().memory_info().rss
        index = VectorIndex(x.shape[1])
        for start in range(0, len(x), 100_000):  # grows like a catalog does
            index.add(np.arange(start, min(start + 100_000, len(x))), x[start : start + 100_000])
        gc.collect()
        grown = psutil.Process().memory_info().rss - before
        scale = 1_000_000 / len(x)
        return {"index_mb_per_1m": index.nbytes * scale / 2**20, "index_rss_mb_per_1m": grown * scale / 2**20}

    def _bench_decode(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        """Each input decoded in a fresh fork of a warmed-up process; peak = VmHWM − VmRSS."""
        from tests.decode_memory import measure_decode_together, measure_decodes

        from tests.support import hostile_uploads as h

        kinds: dict[str, Any] = {
            "a photo of the development set": lambda: photos[0].read_bytes(),
            "JPEG 8000×6000 (48 MP)": lambda: h.jpeg_big(8000, 6000),
            "progressive 4:4:4 JPEG 5000²": lambda: h.jpeg_big(5000, 5000, progressive=True, subsampling=0),
            "progressive 4:4:4 JPEG claiming 7000²": lambda: h.jpeg_progressive_claiming(7000, 7000),
            "16-bit grey PNG 7000² (107 kB)": lambda: h.png_deep_claiming(7000, 7000),
            "16-bit RGBA PNG 6700²": lambda: h.png_deep_claiming(6700, 6700, color_type=6),
            "16-bit RGBA PNG 7000²": lambda: h.png_deep_claiming(7000, 7000, color_type=6),
            "lossless WebP 3800²": lambda: h.webp_lossless_claiming(3800, 3800),
            "lossless WebP 7000² (38 bytes)": lambda: h.webp_lossless_claiming(7000, 7000),
            "animated WebP, 7000² canvas": lambda: h.webp_canvas_claiming(7000, 7000),
            "GIF, 7000² canvas": lambda: h.gif_claiming(7000, 7000),
            "RLE BMP 2800²": lambda: h.bmp_rle_claiming(2800, 2800),
            "RLE BMP 7000² (28 kB)": lambda: h.bmp_rle_claiming(7000, 7000),
            "float32 TIFF 5400²": lambda: h.tiff_float_claiming(5400, 5400),
            "float32 TIFF 7000² (190 kB)": lambda: h.tiff_float_claiming(7000, 7000),
            "int32 TIFF 7000² (190 kB)": lambda: h.tiff_int32_claiming(7000, 7000),
            "multi-page TIFF, 7000² float pages": lambda: h.tiff_multipage_bomb(7000, 7000, pages=2),
        }
        rows: list[dict[str, Any]] = []
        for kind, m in zip(kinds, measure_decodes([make() for make in kinds.values()]), strict=True):
            (o,) = m.outcomes
            rows.append(
                {
                    "kind": kind,
                    "outcome": "decoded" if o["ok"] else f"refused: {o['code']}",
                    "peak_mb": m.peak_mb,
                    "seconds": m.seconds,
                }
            )
        four = [h.png_deep_claiming(7000, 7000)] * 4
        slots = settings.IMAGESEARCH["DECODE_CONCURRENCY"]
        bounded = measure_decode_together(four, env={"IMAGESEARCH_DECODE_CONCURRENCY": str(slots)})
        unbounded = measure_decode_together(four, env={"IMAGESEARCH_DECODE_CONCURRENCY": "4"})
        return {
            "decode_inputs": rows,
            "decode_budget_mb": settings.IMAGESEARCH["DECODE_MEMORY_MB"],
            "decode_slots": slots,
            "decode_peak_mb_max": max(row["peak_mb"] for row in rows),
            "decode_parallel_peak_mb": bounded.peak_mb,
            "decode_parallel_unbounded_mb": unbounded.peak_mb,
            "decode_parallel_kept_mb": bounded.kept_mb,
        }

    def _catalog_of(self, photos: list[Path], size: int, *, real_count: int) -> list[Path]:
        """A catalog of `size` ready images: real photos embedded for real, padded with
        noisy copies of their vectors that share the real files."""
        import hashlib

        from gallery.models import Embedding, Image

        real = photos[: min(len(photos), real_count)]
        folder = Path(tempfile.mkdtemp(prefix="catalog-"))
        for p in real:
            os.symlink(p.resolve(), folder / p.name)
        try:
            call_command("import_images", str(folder), "--no-progress", stdout=open(os.devnull, "w"))  # noqa: SIM115
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        base = list(Image.objects.filter(status=Image.Status.READY).prefetch_related("embeddings"))
        rng = np.random.default_rng(0)
        backbone = base[0].embeddings.all()[0].backbone
        pad = size - len(base)
        new_images, vectors = [], []
        for i in range(max(pad, 0)):
            src = base[i % len(base)]
            new_images.append(Image(
                file=src.file.name, display=src.display.name, thumbnail=src.thumbnail.name, title=f"{src.original_name} (copy {i})",
                original_name=src.original_name, checksum=hashlib.sha256(f"pad-{i}".encode()).hexdigest(),
                size=src.size, width=src.width, height=src.height, format=src.format, status=Image.Status.READY,
            ))  # fmt: skip
            v = src.embeddings.all()[0].as_array() + rng.normal(0, 0.02, size=src.embeddings.all()[0].dim)
            vectors.append((v / np.linalg.norm(v)).astype(np.float32))
        for start in range(0, len(new_images), 2000):
            created = Image.objects.bulk_create(new_images[start : start + 2000])
            Embedding.objects.bulk_create([
                Embedding(image=im, backbone=backbone, dim=len(v), vector=v.tobytes())
                for im, v in zip(created, vectors[start : start + 2000], strict=True)
            ])  # fmt: skip
        search_services.reduction_fit(backbone=backbone)
        return real

    def _bench_http(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        from benchmarks.livestack import live_stack
        from gallery.ratelimit import LIMITS_OFF_ENV

        size = 10_000
        self._catalog_of(photos, size, real_count=200 if quick else 600)
        queries = photos[-(30 if quick else 100) :]
        var = Path(settings.VAR_DIR)
        # The benchmark measures the product's speed, not the per-client rate limiter.
        with live_stack(var / "http-stack", DATABASE_URL=f"sqlite:///{var / 'db.sqlite3'}",
                        DJANGO_MEDIA_ROOT=str(settings.MEDIA_ROOT), IMAGESEARCH_WEB_THREADS="4",
                        IMAGESEARCH_PRIVATE_MEDIA_ROOT=str(settings.PRIVATE_MEDIA_ROOT), **LIMITS_OFF_ENV) as stack:  # fmt: skip
            browser = stack.browser()
            for q in queries[:3]:  # warm: backbone, index build, DBA
                browser.search(q, limit=20)
            lat = []
            for q in queries:
                t0 = time.perf_counter()
                response = browser.search(q, limit=20)
                lat.append(1000 * (time.perf_counter() - t0))
                if response.status_code != 200:
                    raise CommandError(f"search returned {response.status_code}")
            # What people mostly send: 12-megapixel phone photos (the same queries, 4032×3024).
            phone = []
            with tempfile.TemporaryDirectory(prefix="phone-") as folder:
                for q in queries[: 5 if quick else 20]:
                    path = Path(folder) / q.name
                    path.write_bytes(_phone_sized(q))
                    t0 = time.perf_counter()
                    response = browser.search(path, limit=20)
                    phone.append(1000 * (time.perf_counter() - t0))
                    if response.status_code != 200:
                        raise CommandError(f"search with a phone-sized photo returned {response.status_code}")
        from gallery.models import Image

        return {
            "http_catalog": Image.objects.filter(status=Image.Status.READY).count(),
            "http_requests": len(lat),
            "http_p50_ms": _pct(lat, 50),
            "http_p99_ms": _pct(lat, 99),
            "http_phone_requests": len(phone),
            "http_phone_p50_ms": _pct(phone, 50),
            "http_phone_p99_ms": _pct(phone, 99),
        }

    def _bench_latency(self, photos: list[Path], *, quick: bool) -> dict[str, Any]:
        import re

        from benchmarks.livestack import live_stack
        from gallery.ratelimit import LIMITS_OFF_ENV

        var = Path(settings.VAR_DIR)
        uploads = photos[::-1][200 : 200 + (6 if quick else 20)]
        with live_stack(var / "latency-stack", DATABASE_URL=f"sqlite:///{var / 'latency.sqlite3'}",
                        DJANGO_MEDIA_ROOT=str(var / "latency-media"), **LIMITS_OFF_ENV) as stack:  # fmt: skip
            browser = stack.browser()
            warm = browser.upload([photos[0]])  # the worker builds its network on start; wait for it
            first = int(re.search(r"ids=(\d+)", warm.url).group(1))  # type: ignore[union-attr]
            browser.wait_ready([first], timeout=120)
            seconds = []
            for photo in uploads:
                time.sleep(0.5)  # the worker is idle again
                t0 = time.perf_counter()
                response = browser.upload([photo])
                pk = int(re.search(r"ids=(\d+)", response.url).group(1))  # type: ignore[union-attr]
                while browser.statuses([pk]).get(pk) not in ("ready", "failed"):
                    if time.perf_counter() - t0 > 60:
                        raise CommandError("an upload did not become ready within a minute")
                    time.sleep(0.02)
                seconds.append(time.perf_counter() - t0)
        return {
            "latency_uploads": len(seconds),
            "upload_to_searchable_p50_s": _pct(seconds, 50),
            "upload_to_searchable_max_s": max(seconds),
        }
