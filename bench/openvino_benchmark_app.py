"""Is `edgecls bench` faithful? Compare its p50 with OpenVINO's own benchmark_app on the same IR.

Both run synchronously (one request, one stream) with the same thread count. Prints both medians
and their ratio; the goal is agreement within 10%.

    python bench/openvino_benchmark_app.py [MODEL.xml] [--threads 2] [--seconds 15]

Without a model, the ONNX-zoo MobileNetV2 int8 from the shared assets is converted to IR first.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
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

    model = args.model
    if model is None:
        import openvino as ov

        model = Path(tempfile.mkdtemp()) / "mobilenetv2-12-int8.xml"
        ov.save_model(ov.Core().read_model(str(args.assets / "models/onnx/mobilenetv2-12-int8.onnx")), str(model))
        # A fixed batch of 1, like the edgecls side.
        m = ov.Core().read_model(str(model))
        m.reshape([1, 3, 224, 224])
        ov.save_model(m, str(model))
    app = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [app, "-m", str(model), "-d", "CPU", "-api", "sync", "-nstreams", "1", "-nthreads", str(args.threads),
           "-hint", "none", "-t", str(int(args.seconds)), "-infer_precision", "f32"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"Median:\s*([\d.]+)\s*ms", proc.stdout)
    if proc.returncode != 0 or not found:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
        return 1
    theirs = float(found.group(1))

    from edgecls.bench import bench_artifact

    ours = bench_artifact(model, threads=args.threads, min_runs=200, min_seconds=args.seconds)["latency_ms"]["p50"]
    print(f"model: {model}")
    print(f"benchmark_app (sync, 1 stream, {args.threads} threads) median: {theirs:.3f} ms")
    print(f"edgecls bench ({args.threads} threads) p50:                   {ours:.3f} ms")
    print(f"ratio edgecls / benchmark_app: {ours / theirs:.3f} (goal: within 0.90-1.10)")
    print("command: " + " ".join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
