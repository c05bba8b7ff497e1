"""Is `edgecls bench` faithful? Compare its p50 with OpenVINO's own benchmark_app on the same IR.

Both run synchronously (one request, one stream) with the same thread count. Prints both medians
and their ratio; the goal is agreement within 10%.

    python bench/openvino_benchmark_app.py [MODEL.xml] [--threads 2] [--seconds 15]

Without a model, the flowers MobileNetV2 artifacts of bench/flowers_matrix.py are used (fp32 and int8).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared")))
    args = parser.parse_args()

    models = [args.model] if args.model else [ROOT / "runs/flowers_matrix/export" / f"model_{q}.xml" for q in ("fp32", "int8")]
    missing = [str(m) for m in models if not m.is_file()]
    if missing:
        print(f"not found: {', '.join(missing)}; run python bench/flowers_matrix.py first or pass MODEL.xml")
        return 2
    app = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    for model in models:
        if compare_one(app, model, args.threads, args.seconds):
            return 1
    return 0


def compare_one(app: str, model: Path, threads: int, seconds: float) -> int:
    from edgecls.bench import bench_artifact
    from edgecls.manifest import load_manifest

    manifest = load_manifest(model)
    h, w = manifest.preprocessing.size if manifest else (224, 224)
    cmd = [app, "-m", str(model), "-d", "CPU", "-api", "sync", "-nstreams", "1", "-nthreads", str(threads),
           "-hint", "none", "-t", str(int(seconds)), "-infer_precision", "f32", "-shape", f"[1,{h},{w},3]"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"Median:\s*([\d.]+)\s*ms", proc.stdout)
    if proc.returncode != 0 or not found:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
        return 1
    theirs = float(found.group(1))
    ours = bench_artifact(model, threads=threads, min_runs=200, min_seconds=seconds)["latency_ms"]["p50"]
    print(f"model: {model}")
    print(f"  benchmark_app (sync, 1 stream, {threads} threads, f32) median: {theirs:.3f} ms")
    print(f"  edgecls bench ({threads} threads) p50:                        {ours:.3f} ms")
    print(f"  ratio edgecls / benchmark_app: {ours / theirs:.3f} (goal: within 0.90-1.10)")
    print("  command: " + " ".join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
