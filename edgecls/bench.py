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

from . import __version__, checks
from .errors import EdgeclsError, ModelError, OptionError

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
    """What machine a figure was measured on, with the ISA features that change int8 results."""
    from .cpu import cpu_info

    cpu = cpu_info()
    return {"cpu": cpu["model"], "cpu_features": cpu["features"], "cpu_class": cpu["class"],
            "cores": os.cpu_count(), "machine": platform.machine(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "edgecls": __version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def measure(path: str | Path, engine_options: dict[str, Any] | None = None, batch: int = 1, warmup: int = 10,
            warmup_seconds: float = 0.5, min_runs: int = 50, min_seconds: float = 2.0,
            max_runs: int = 100000) -> dict[str, Any]:
    """Time one artifact in this process: init, first inference, then steady-state runs.

    The artifact is opened as every loader opens it (checksums and structure checked against its
    manifest) with exactly `engine_options`. A model without a manifest is timed too: its input is
    a random tensor of the right shape and type (latency does not depend on pixel values here)."""
    from .runtime import Classifier, open_artifact

    path = Path(path)
    engine_options = dict(engine_options or {})
    t0 = time.perf_counter()
    engine, manifest = open_artifact(path, **engine_options)
    init_ms = (time.perf_counter() - t0) * 1e3  # includes the checksum, as every real start does
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
        "backbone": manifest.source.get("backbone") if manifest else None,
        "engine": engine.name, "engine_version": engine.version,
        "threads": engine_options.get("num_threads"), "engine_options": engine_options, "batch": batch, "runs": len(samples), "warmup_runs": count,
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
    """Bytes of the model file and the files that belong to it (an OpenVINO IR's weights)."""
    from .engines import companion_files

    return path.stat().st_size + sum(c.stat().st_size for c in companion_files(path) if c.exists())


DEFAULT_TIMEOUT_S = 900.0


def bench_artifact(path: str | Path, isolate: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
                   **options: Any) -> dict[str, Any]:
    """Measure one artifact, in a worker process unless `isolate` is False; a worker that runs
    longer than `timeout` seconds (a hung engine or delegate) is killed and reported."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: artifact not found")
    if not isolate:
        return measure(path, **options)
    cmd = [sys.executable, "-m", "edgecls.bench", str(path), json.dumps(options)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeclsError(f"{path}: benchmark worker did not finish within {timeout:g} s and was stopped "
                           "(a hung engine or delegate?); raise --timeout for a slow model") from None
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise EdgeclsError(f"{path}: benchmark failed: {message}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_options(batch: int = 1, warmup: int = 0, warmup_seconds: float = 0.0, min_runs: int = 1,
                  min_seconds: float = 0.0, max_runs: int = 1, rounds: int = 1, threads: int | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S, activation: str | None = None) -> None:
    """Range-check benchmark settings before any work starts."""
    from .runtime import check_activation

    for name, value, low in (("batch", batch, 1), ("runs", min_runs, 1), ("max_runs", max_runs, 1),
                             ("rounds", rounds, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise OptionError(f"{name} must be an integer >= {low}, got {value!r}", name)
    for name, value in (("warmup_seconds", warmup_seconds), ("min_seconds", min_seconds)):
        if not 0 <= value < float("inf"):
            raise OptionError(f"{name} must be a number >= 0, got {value!r}", name)
    checks.threads("threads", threads)
    checks.positive("timeout", timeout, "number of seconds")
    check_activation(activation)


def bench(paths: Sequence[str | Path], on_result=None, target: str | None = None,
          dataset: str | Path | None = None, rounds: int = 1, threads: int | None = None,
          activation: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, on_note=None,
          **options: Any) -> dict[str, Any]:
    """Benchmark several artifacts; returns the report document (schema edgecls.bench/1).

    Each artifact runs with the engine options that `stream` would use for it (the target
    profile's table for its engine, then `threads`); they are recorded per result. With a
    target its reference latencies are attached (as references, not measurements). With a
    labelled dataset, accuracy and top-1 agreement with the first artifact are measured on it
    (the validation split when the manifest records one). With several rounds the artifacts are
    measured in turn, round after round, and their timings pooled, so that a slow phase of a
    shared machine does not land on one artifact alone.
    """
    from .targets import engine_options_for

    check_options(rounds=rounds, threads=threads, timeout=timeout, activation=activation, **options)
    unknown = sorted(set(options) - {"batch", "warmup", "warmup_seconds", "min_runs", "min_seconds", "max_runs"})
    if unknown:
        raise OptionError(f"unknown benchmark option {unknown[0]!r}")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ModelError(f"{missing[0]}: artifact not found")
    target_doc = None
    setups = []
    for p in paths:
        engine_options, notes = engine_options_for(p, target, threads)
        setups.append(engine_options)
        for note in notes:
            (on_note or (lambda _: None))(note)
    if target:
        from .targets import get_target

        profile = get_target(target)
        target_doc = {"name": profile.name, "hardware": profile.hardware, "description": profile.description,
                      "engines": profile.engines, "artifacts": profile.artifacts, "references": profile.references,
                      "device": profile.device}
    # Accuracy first: a dataset that cannot be used fails before minutes of timing, not after.
    accuracy = _dataset_accuracy(paths, Path(dataset), setups, activation) if dataset is not None else None
    from .device_report import record
    from .provenance import thermal_state

    before = thermal_state()  # a device that throttles during the run is flagged in the report
    per_round = [[bench_artifact(p, timeout=timeout, engine_options=o, **options) for p, o in zip(paths, setups)]
                 for _ in range(rounds)]
    device = record(before, thermal_state())
    results = [_pool([r[i] for r in per_round]) for i in range(len(paths))]
    for result, measured in zip(results, accuracy or []):
        result.update(measured)
    for result, name in zip(results, display_names(paths)):
        result["name"] = name
    if on_result:
        for result in results:
            on_result(result)
    return {"schema": SCHEMA, "host": host_info(),
            "options": {**options, "threads": threads, "rounds": rounds, "timeout_s": timeout},
            "target": target_doc, "results": results, "device": device}


def display_names(paths: Sequence[str | Path]) -> list[str]:
    """File names, lengthened by parent folders until no two artifacts share one (members of an
    ensemble exported side by side are all `model_int8.tflite`)."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        shared = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not shared:
            return names
        for i in shared:
            depth[i] += 1


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


def _dataset_accuracy(paths: Sequence[str | Path], dataset: Path, setups: list[dict[str, Any]],
                      activation: str | None = None) -> list[dict[str, Any]]:
    """Accuracy of each artifact on the dataset and top-1 agreement with the first one."""
    from . import data as data_mod
    from .runtime import Classifier

    folder = data_mod.scan(dataset)
    reference = None
    measured = []
    for path, engine_options in zip(paths, setups):
        r: dict[str, Any] = {}
        measured.append(r)
        clf = Classifier.from_artifact(path, activation=activation, **engine_options)
        split_cfg = clf.manifest.source.get("split") if clf.manifest else None
        indices = data_mod.recorded_split(folder, split_cfg)["val" if split_cfg else "all"]
        loaded = data_mod.load_images(folder, indices, clf.preprocessing)
        to_model = data_mod.label_indices(folder, clf.labels)
        predicted = clf.scores(loaded.images).argmax(1)
        r["accuracy"] = float(np.mean(predicted == to_model[loaded.targets]))
        r["accuracy_source"] = f"{dataset} ({'val' if split_cfg else 'all'} split, {len(predicted)} images)"
        reference = predicted if reference is None else reference
        r["top1_agreement"] = float(np.mean(predicted == reference)) if len(reference) == len(predicted) else None
    return measured


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
