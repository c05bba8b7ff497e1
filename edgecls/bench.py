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
    """Time one artifact in this process: init, first inference, then steady-state runs."""
    from .runtime import Classifier

    path = Path(path)
    t0 = time.perf_counter()
    clf = Classifier.from_artifact(path, num_threads=threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    h, w = clf.preprocessing.size
    picture = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = np.repeat(clf.prepare(picture)[None], batch, axis=0)
    run = clf.engine.run
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
    manifest = clf.manifest
    return {
        "artifact": str(path), "name": path.name,
        "format": manifest.format if manifest else path.suffix.lstrip("."),
        "quantization": manifest.quantization if manifest else "unknown",
        "engine": clf.engine.name, "engine_version": clf.engine.version,
        "threads": threads, "batch": batch, "runs": len(samples), "warmup_runs": count,
        "init_ms": init_ms, "first_inference_ms": first_ms, "latency_ms": stats,
        "throughput_ips": batch * 1e3 / stats["mean"],
        "size_bytes": _artifact_size(path),
        "peak_rss_mb": peak_rss_mb(),
        "accuracy": (manifest.verification.get("accuracy") if manifest else None),
        "top1_agreement": (manifest.verification.get("top1_agreement") if manifest else None),
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


def bench(paths: Sequence[str | Path], on_result=None, **options: Any) -> dict[str, Any]:
    """Benchmark several artifacts; returns the report document."""
    results = []
    for p in paths:
        result = bench_artifact(p, **options)
        results.append(result)
        if on_result:
            on_result(result)
    return {"schema": SCHEMA, "host": host_info(), "options": options, "results": results}


def markdown_table(report: dict[str, Any]) -> str:
    host = report["host"]
    lines = [
        f"Measured on {host['cpu']} ({host['cores']} cores), {host['os']}, edgecls {host['edgecls']}, {host['date']}.",
        "",
        "| artifact | engine | threads | size (MB) | p50 (ms) | p90 (ms) | p99 (ms) | mean (ms) | throughput (img/s) | peak RSS (MB) | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lat = r["latency_ms"]
        acc = f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else "-"
        lines.append(
            f"| {r['name']} | {r['engine_version']} | {r['threads'] or 'default'} | {r['size_bytes'] / 1e6:.2f} | "
            f"{lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['mean']:.2f} | "
            f"{r['throughput_ips']:.1f} | {r['peak_rss_mb']:.0f} | {acc} |"
        )
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    from .manifest import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, "# Benchmark\n\n" + markdown_table(report))
    return json_path, md_path


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
