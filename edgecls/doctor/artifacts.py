"""Per artifact: manifest, checksum, opens with the target's engine options, XNNPACK applied (LiteRT),
its check images answered as at export, and the fastest thread count."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import Finding, Request

# The thread sweep: a few runs per count, enough to rank them, bounded for slow (emulated) CPUs.
SWEEP_RUNS, SWEEP_SECONDS, SWEEP_MAX_SECONDS = 5, 0.3, 3.0


def check(path: Path, request: Request) -> list[Finding]:
    """Every finding for one artifact; later checks are skipped once one that they need failed."""
    from ..errors import ModelError
    from ..manifest import load_manifest, verify_checksums

    section = path.name
    if path.is_dir():
        return [Finding(section, "file", "fail", f"{path}: is a folder, expected a model file (.tflite, .onnx, or an "
                        "OpenVINO .xml)", "name the model file itself, such as FOLDER/model_int8.tflite")]
    if not path.is_file():
        return [Finding(section, "file", "fail", f"{path}: not found",
                        "copy the artifact with its manifest (NAME.json) and check images (NAME.checks/)")]
    try:
        manifest = load_manifest(path)
    except ModelError as exc:
        return [Finding(section, "manifest", "fail", str(exc), "copy the manifest again, or re-export the model")]
    findings = []
    if manifest is None:
        # Needed: without a manifest neither the file's checksum nor its answers can be verified,
        # and the installer activates a release only when its doctor passes (install.sh --force
        # is the explicit way to run an unverified model anyway).
        findings.append(Finding(section, "manifest", "fail", f"no manifest ({path.name}.json): its checksum, labels "
                                "and answers cannot be verified", "copy the manifest beside the artifact (edgecls "
                                "export writes it; `edgecls deploy --labels` writes one for a foreign model); to "
                                "install it unverified anyway: install.sh --force"))
    else:
        try:
            verify_checksums(path, manifest)
            findings.append(Finding(section, "checksum", "ok", "sha256 matches the manifest"))
        except ModelError as exc:
            findings.append(Finding(section, "checksum", "fail", str(exc), "copy the bundle again and check it "
                                    "(`sha256sum -c SHA256SUMS` in the bundle folder), or re-export the model"))
            return findings
    engine, clf, options, finding = _open(path, request, manifest is not None)
    findings.append(finding)
    if engine is None:
        return findings
    if path.suffix == ".tflite" and options.get("use_xnnpack", True) and not options.get("delegate"):
        findings.append(_xnnpack(path, section))
    if clf is not None:
        findings.append(_checks(path, manifest, clf, section))
    if request.sweep:
        findings.append(_sweep(path, engine, options, section))
    return findings


def _open(path: Path, request: Request, has_manifest: bool):
    """(engine, classifier or None, engine options, finding) opened with the target's options;
    engine None when it fails. Without a manifest only the engine opens (no labels to answer with)."""
    from ..errors import EdgeclsError
    from ..runtime import Classifier, open_artifact
    from ..targets import engine_options_for

    try:
        options, notes = engine_options_for(path, request.target.name if request.target else None)
        started = time.perf_counter()
        if has_manifest:
            clf = Classifier.from_artifact(path, verify_checksum=False, **options)
            engine = clf.engine
        else:
            clf, (engine, _) = None, open_artifact(path, verify_checksum=False, **options)
    except EdgeclsError as exc:
        text = str(exc)
        fix = ("install the engine (see the engines above)" if "not installed" in text else
               "install the Edge TPU runtime (see delegates above) or deploy the CPU build" if "libedgetpu" in text
               else "re-export the model with this edgecls version, or copy it again")
        return None, None, {}, Finding(path.name, "opens", "fail", text, fix)
    ms = (time.perf_counter() - started) * 1e3
    detail = (f"{engine.version}, input {list(engine.input.shape)} {np.dtype(engine.input.dtype).name}, "
              + (f"{len(clf.labels)} classes" if clf else "no labels (engine only)")
              + f", opened in {ms:.0f} ms; options {options or 'engine defaults'}")
    finding = Finding(path.name, "opens", "warn" if notes else "ok", detail + "".join(f"; {n}" for n in notes),
                      "export the format the target suits (`edgecls targets`)" if notes else "",
                      {"engine": engine.version, "options": options, "open_ms": ms})
    return engine, clf, options, finding


def _xnnpack(path: Path, section: str) -> Finding:
    """Whether LiteRT hands the model to its XNNPACK delegate: a delegated graph has DELEGATE nodes.

    LiteRT logs the delegate's creation only once per process, so the log cannot tell; the node
    list (`_get_ops_details`, in ai-edge-litert and tflite-runtime alike) can."""
    from ..engines.litert import interpreter_module, quiet_stderr

    mod, _ = interpreter_module()
    try:
        with quiet_stderr():
            interp = mod.Interpreter(model_content=path.read_bytes(), num_threads=1)
            interp.allocate_tensors()
        ops = [op.get("op_name") for op in interp._get_ops_details()]
    except (AttributeError, ValueError, RuntimeError) as exc:
        return Finding(section, "xnnpack", "info", f"cannot tell whether XNNPACK applies ({exc})")
    if "DELEGATE" in ops:
        return Finding(section, "xnnpack", "ok", "LiteRT runs the model through the XNNPACK delegate (fast CPU kernels)")
    return Finding(section, "xnnpack", "warn", "LiteRT did not delegate any part of the model to XNNPACK",
                   "this LiteRT build may lack XNNPACK (some tflite-runtime builds do): install ai-edge-litert "
                   "from the bundle; the model still runs, slower")


def _checks(path: Path, manifest, clf, section: str) -> Finding:
    from ..check_images import run_checks

    if not manifest.checks:
        return Finding(section, "answers", "warn", "the manifest stores no check images, so answers cannot be confirmed",
                       "re-export with this edgecls (export stores check images), or deploy with --check-image")
    results = run_checks(path, manifest, clf)
    bad = [r for r in results if not r["ok"]]
    drift = [abs(r["probability"] - r["expected_probability"]) for r in results
             if r.get("probability") is not None and r.get("expected_probability") is not None]
    detail = (f"{len(results) - len(bad)}/{len(results)} check images answered as at export"
              + (f" (largest probability change {max(drift):.4f})" if drift else ""))
    if bad:
        return Finding(section, "answers", "fail", detail + ": " + "; ".join(r["problem"] for r in bad),
                       "if files were changed, copy the bundle again; if not, this device computes differently: "
                       "measure it with `edgecls bench --dataset`, and export int8 with --int8-cpu portable",
                       {"results": results})
    return Finding(section, "answers", "ok", detail, data={"results": results})


def _sweep(path: Path, engine, options: dict[str, Any], section: str) -> Finding:
    """Median latency at 1, 2, 4... threads up to the CPUs this process may use (random input of
    the model's shape: the time does not depend on the pixel values)."""
    from ..errors import EdgeclsError
    from ..runtime import open_artifact
    from ..provenance import emulated

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = sorted({n for n in (1, 2, 4, 8, 16) if n <= cpus} | {cpus})
    shape = [1 if d < 1 or i == 0 else d for i, d in enumerate(engine.input.shape)]
    rng, dtype = np.random.default_rng(0), np.dtype(engine.input.dtype)
    x = (rng.integers(0, 128, shape) if np.issubdtype(dtype, np.integer) else rng.standard_normal(shape)).astype(dtype)
    timings: dict[int, float] = {}
    for n in counts:
        try:
            opened, _ = open_artifact(path, verify_checksum=False, **{**options, "num_threads": n})
        except EdgeclsError:
            continue
        timings[n] = _median_ms(opened.run, x)
    if not timings:
        return Finding(section, "threads", "warn", "could not time the artifact", "")
    best = min(timings, key=timings.get)
    detail = (f"fastest at {best} thread{'s' if best > 1 else ''}: "
              + ", ".join(f"{n}: {ms:.1f} ms" for n, ms in timings.items()))
    if emulated():
        detail += " (emulated CPU: not the device's speed)"
    configured = options.get("num_threads")
    note = f"; the target uses {configured}" if configured and configured != best else ""
    return Finding(section, "threads", "info", detail + note,
                   data={"p50_ms": {str(k): v for k, v in timings.items()}, "fastest": best})


def _median_ms(run, x: np.ndarray) -> float:
    for _ in range(2):
        run(x)
    samples, start = [], time.perf_counter()
    while (len(samples) < SWEEP_RUNS or time.perf_counter() - start < SWEEP_SECONDS) \
            and time.perf_counter() - start < SWEEP_MAX_SECONDS:
        t = time.perf_counter()
        run(x)
        samples.append((time.perf_counter() - t) * 1e3)
    return float(np.median(samples))
