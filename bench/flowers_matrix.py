"""Export the whole matrix for MobileNetV2 at 224 on flowers-small and measure every artifact.

Prints, per artifact: size, p50 latency at batch 1 and 2 threads, accuracy and top-1 agreement
with the Keras model, then the int8/fp32 latency ratio per engine. Results go to
bench/results/flowers_matrix.{json,md} and bench/results/flowers/bench.{json,md,html}.

    python bench/flowers_matrix.py [--assets ../shared] [--work runs/flowers_matrix] [--retrain]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    import subprocess
    from types import SimpleNamespace

    from edgecls.bench import bench, markdown_table
    from edgecls.files import atomic_write_text
    from edgecls.report import write_all

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared")))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "flowers_matrix")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    model = args.work / "model" / "model.keras"
    # Training and export run as separate processes, so that no TensorFlow threads or memory
    # linger in this one while the benchmark workers are timed.
    cli = [sys.executable, "-m", "edgecls.cli"]
    if args.retrain or not model.exists():  # reuse the trained model unless asked
        subprocess.run([*cli, "train", str(args.assets / "data/flowers-small"), "--out", str(model.parent),
                        "--weights", str(args.assets / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"),
                        "--epochs", "8", "--fine-tune-epochs", "5", "--seed", "0"], check=True)
    export_dir = args.work / "export"
    subprocess.run([*cli, "export", str(model), "--format", "all", "--quant", "all", "--out", str(export_dir),
                    "--max-accuracy-drop", "100"], check=True)
    summary = json.loads((export_dir / "export_summary.json").read_text())
    kept = [SimpleNamespace(**r) for r in summary["artifacts"] if r["passed"]]
    report = bench([r.path for r in kept], threads=args.threads, batch=1, min_runs=50, min_seconds=2.0, rounds=3)
    by_path = {r.path: r for r in kept}
    rows = []
    for res in report["results"]:
        exp = by_path[res["artifact"]]
        rows.append({"artifact": f"{exp.format}:{exp.quant}", "engine": res["engine"],
                     "size_mb": res["size_bytes"] / 1e6, "p50_ms": res["latency_ms"]["p50"],
                     "accuracy": exp.accuracy, "keras_accuracy": exp.reference_accuracy,
                     "drop_pp": exp.accuracy_drop_pp, "agreement": exp.top1_agreement,
                     "max_prob_diff": exp.max_prob_diff})
    p50 = {r["artifact"]: r["p50_ms"] for r in rows}
    ratios = {fmt: p50[f"{fmt}:int8"] / p50[f"{fmt}:fp32"] for fmt in ("tflite", "onnx", "openvino")
              if f"{fmt}:int8" in p50 and f"{fmt}:fp32" in p50}
    lines = ["| artifact | engine | size (MB) | p50 (ms) | accuracy | Δ vs Keras (pp) | top-1 agreement | max abs Δp |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['engine']} | {r['size_mb']:.2f} | {r['p50_ms']:.2f} | {r['accuracy']:.4f} | "
                     f"{0.0 - r['drop_pp']:+.2f} | {r['agreement']:.4f} | {r['max_prob_diff']:.4f} |")
    lines += ["", "| engine | int8 / fp32 p50 latency |", "|---|---|"]
    lines += [f"| {fmt} | {ratio:.2f}x |" for fmt, ratio in ratios.items()]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"host": report["host"], "threads": args.threads, "rows": rows, "int8_fp32_ratio": ratios, "bench": report}
    write_all(report, args.out / "flowers")  # bench.json / bench.md / bench.html with plots
    atomic_write_text(args.out / "flowers_matrix.json", json.dumps(doc, indent=2) + "\n")
    host = report["host"]
    atomic_write_text(args.out / "flowers_matrix.md",
                      f"# flowers-small MobileNetV2 224: export matrix\n\nHost: {host['cpu']} ({host['cores']} cores), "
                      f"{host['os']}, {host['date']}; batch 1, {args.threads} threads. Command: "
                      "`python bench/flowers_matrix.py`.\n\n" + text + "\n\n## Full benchmark\n\n" + markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
