"""Latency, throughput, size and memory of artifacts through the device runtime.

Each artifact is measured in a fresh worker process so its peak resident memory is its own.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import EdgeclsError, ModelError

SCHEMA = "edgecls.bench/1"


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """min/p50/p90/p99/mean/std/max of latency samples (linear-interpolated percentiles)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"min": float(a.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(a.mean()), "std": float(a.std()), "max": float(a.max())}


def host_info() -> dict[str, Any]:
    """What machine a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "edgecls": __version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def measure(path: str | Path, threads: int | None = None, batch: int = 1, warmup: int = 10,
            warmup_seconds: float = 0.5, min_runs: int = 50, min_seconds: float = 2.0,
            max_runs: int = 100000) -> dict[str, Any]:
    """Time one artifact in this process: init, first inference, then steady-state runs.

    A model without a manifest is timed too: its input is a random tensor of the right shape
    and type (latency does not depend on pixel values for these networks)."""
    from .engines import open_engine
    from .manifest import load_manifest
    from .runtime import Classifier

    path = Path(path)
    manifest = load_manifest(path)
    t0 = time.perf_counter()
    engine = open_engine(path, num_threads=threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(0)
    if manifest is not None:
        clf = Classifier(engine, manifest.labels, manifest.preprocessing, manifest, path)
        h, w = clf.preprocessing.size
        x = np.repeat(clf.prepare(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))[None], batch, axis=0)
    else:
        shape = [batch if i == 0 else d for i, d in enumerate(engine.input.shape)]
        if min(shape) < 1:
            raise ModelError(f"{path}: dynamic input shape {list(engine.input.shape)}; add a manifest to benchmark it")
        dtype = engine.input.dtype
        x = (rng.integers(0, 256, shape) if np.issubdtype(dtype, np.integer) else rng.standard_normal(shape)).astype(dtype)
    run = engine.run
    t0 = time.perf_counter()
    run(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    count, start = 0, time.perf_counter()
    while count < warmup or time.perf_counter() - start < warmup_seconds:
        run(x)
        count += 1
    samples = []
    start = time.perf_counter()
    while (len(samples) < min_runs or time.perf_counter() - start < min_seconds) and len(samples) < max_runs:
        t = time.perf_counter()
        run(x)
        samples.append((time.perf_counter() - t) * 1e3)
    stats = latency_stats(samples)
    return {
        "artifact": str(path), "name": path.name,
        "format": manifest.format if manifest else path.suffix.lstrip("."),
        "quantization": manifest.quantization if manifest else "unknown",
        "engine": engine.name, "engine_version": engine.version,
        "threads": threads, "batch": batch, "runs": len(samples), "warmup_runs": count,
        "init_ms": init_ms, "first_inference_ms": first_ms, "latency_ms": stats,
        "throughput_ips": batch * 1e3 / stats["mean"],
        "size_bytes": _artifact_size(path),
        "peak_rss_mb": peak_rss_mb(),
        "accuracy": (manifest.verification.get("accuracy") if manifest else None),
        "top1_agreement": (manifest.verification.get("top1_agreement") if manifest else None),
        "accuracy_source": "manifest verification (validation split)" if manifest and manifest.verification else None,
        # A bounded sample of the raw timings, for distribution plots.
        "samples_ms": [round(float(v), 4) for v in np.asarray(samples)[:: max(1, len(samples) // 2000)]],
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM, unlike ru_maxrss, is not inherited across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _artifact_size(path: Path) -> int:
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        size += path.with_suffix(".bin").stat().st_size
    return size


def bench_artifact(path: str | Path, isolate: bool = True, **options: Any) -> dict[str, Any]:
    """Measure one artifact, in a worker process unless `isolate` is False."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: artifact not found")
    if not isolate:
        return measure(path, **options)
    cmd = [sys.executable, "-m", "edgecls.bench", str(path), json.dumps(options)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise EdgeclsError(f"{path}: benchmark failed: {message}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(paths: Sequence[str | Path], on_result=None, target: str | None = None,
          dataset: str | Path | None = None, rounds: int = 1, **options: Any) -> dict[str, Any]:
    """Benchmark several artifacts; returns the report document (schema edgecls.bench/1).

    With a target profile, its engine options apply and its reference latencies are attached
    (as references, not measurements). With a labelled dataset, accuracy and top-1 agreement with
    the first artifact are measured on it (the validation split when the manifest records one).
    With several rounds the artifacts are measured in turn, round after round, and their timings
    pooled, so that a slow phase of a shared machine does not land on one artifact alone.
    """
    if rounds < 1:
        raise EdgeclsError(f"rounds must be at least 1, got {rounds}")
    target_doc = None
    if target:
        from .targets import get_target

        profile = get_target(target)
        for k, v in profile.engine_options().items():
            options.setdefault("threads" if k == "num_threads" else k, v)
        options = {k: v for k, v in options.items() if k in ("threads", "batch", "warmup", "warmup_seconds",
                                                                "min_runs", "min_seconds", "max_runs")}
        target_doc = {"name": profile.name, "hardware": profile.hardware, "description": profile.description,
                      "engine": profile.engine, "references": profile.references}
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ModelError(f"{missing[0]}: artifact not found")
    per_round = [[bench_artifact(p, **options) for p in paths] for _ in range(rounds)]
    results = [_pool([r[i] for r in per_round]) for i in range(len(paths))]
    if on_result:
        for result in results:
            on_result(result)
    if dataset is not None:
        _dataset_accuracy(results, Path(dataset))
    return {"schema": SCHEMA, "host": host_info(), "options": {**options, "rounds": rounds},
            "target": target_doc, "results": results}


def _pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of the same artifact: timings pooled, memory at its peak."""
    if len(rounds) == 1:
        return rounds[0]
    pooled = dict(rounds[0])
    samples = [v for r in rounds for v in r["samples_ms"]]
    pooled["latency_ms"] = latency_stats(samples)
    pooled["samples_ms"] = samples[:: max(1, len(samples) // 2000)]
    pooled["runs"] = sum(r["runs"] for r in rounds)
    pooled["throughput_ips"] = pooled["batch"] * 1e3 / pooled["latency_ms"]["mean"]
    pooled["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    pooled["rounds"] = len(rounds)
    return pooled


def _dataset_accuracy(results: list[dict[str, Any]], dataset: Path) -> None:
    from . import data as data_mod
    from .runtime import Classifier

    folder = data_mod.scan(dataset)
    reference = None
    for r in results:
        clf = Classifier.from_artifact(r["artifact"])
        split_cfg = clf.manifest.source.get("split") if clf.manifest else None
        indices = data_mod.recorded_split(folder, split_cfg)["val" if split_cfg else "all"]
        loaded = data_mod.load_images(folder, indices, clf.preprocessing)
        to_model = data_mod.label_indices(folder, clf.labels)
        predicted = clf.scores(loaded.images).argmax(1)
        r["accuracy"] = float(np.mean(predicted == to_model[loaded.targets]))
        r["accuracy_source"] = f"{dataset} ({'val' if split_cfg else 'all'} split, {len(predicted)} images)"
        reference = predicted if reference is None else reference
        r["top1_agreement"] = float(np.mean(predicted == reference)) if len(reference) == len(predicted) else None


def markdown_table(report: dict[str, Any]) -> str:
    from .report import markdown

    return markdown(report).split("\n", 2)[2]


def write_reports(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    from .report import write_all

    paths = write_all(report, out_dir)
    return paths["json"], paths["md"]


def _worker(argv: list[str]) -> int:
    try:
        result = measure(argv[0], **json.loads(argv[1]))
    except EdgeclsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
