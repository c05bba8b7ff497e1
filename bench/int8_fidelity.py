"""int8 fidelity per CPU class: every int8 artifact's accuracy and top-1 agreement with the fp32
Keras model on every photo of a dataset, on this host's ISA and on the capped ones that exist.

CPU-class levers found (checked on this project's hosts):
- onnxruntime (MLAS) and LiteRT (XNNPACK) have no ISA cap of their own; they dispatch on CPUID.
  qemu-user (`qemu-x86_64 -cpu Haswell-v4`, Debian package qemu-user) emulates an AVX2 CPU without
  AVX-512/VNNI, so the same wheels take their AVX2 code paths (slow: timings mean nothing there).
- OpenVINO: its int8 convolutions are oneDNN's, and oneDNN honours ONEDNN_MAX_CPU_ISA=AVX2 in
  the release wheel (OpenVINO's own kernels ignore it: OV_CPU_MAX_ISA is debug-build only in
  2025.4). Measured here the cap reproduces saturation (an IR without NNCF's overflow fix changes
  5.5% of its answers) and leaves an overflow-fixed IR bit-identical, like qemu's full AVX2 CPU,
  at native speed. qemu caps everything.

    python bench/int8_fidelity.py [--model runs/x/model.keras] [--schemes portable,x86-vnni] [--no-emulate]

Prints one row per (artifact, CPU) and the int8/fp32 p50 latency per engine on the host; writes
bench/results/int8_fidelity.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
QEMU_AVX2 = ["qemu-x86_64", "-cpu", "Haswell-v4"]
FORMATS = ("tflite", "onnx", "openvino")


def worker(images_path: str, out_path: str, artifacts: list[str]) -> int:
    """Score every image with every artifact through the device runtime (no TensorFlow)."""
    import numpy as np

    from edgecls.runtime import Classifier

    images = np.load(images_path)
    scores = {}
    for i, path in enumerate(artifacts):
        clf = Classifier.from_artifact(path, num_threads=1)
        scores[f"a{i}"] = clf.scores(images)  # by position: two schemes share a file name
    np.savez(out_path, **scores)
    return 0


def cpu_runs(host_class: str, emulate: bool, onednn_cap: bool = False) -> list[tuple[str, list[str], dict[str, str], set[str]]]:
    """(label, command prefix, environment, engines it caps) for each CPU class to measure."""
    runs = [(f"host ({host_class})", [], {}, set(FORMATS))]
    if host_class == "x86-vnni":
        if onednn_cap:  # fast; qemu below is the complete check
            runs.append(("openvino ONEDNN_MAX_CPU_ISA=AVX2", [], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"openvino"}))
        if emulate and shutil.which(QEMU_AVX2[0]):
            runs.append(("x86-avx2 (qemu -cpu Haswell-v4)", QEMU_AVX2, {"EDGECLS_CPU_FEATURES": "avx2"}, set(FORMATS)))
        elif emulate:
            print("qemu-x86_64 not found (apt-get install qemu-user): no emulated AVX2 run", file=sys.stderr)
    return runs


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3], sys.argv[4:])
    import numpy as np

    from edgecls import data
    from edgecls.cpu import cpu_info
    from edgecls.export.verify import compare
    from edgecls.files import atomic_write_text
    from edgecls.manifest import load_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared")))
    parser.add_argument("--model", type=Path, help="a .keras model trained by edgecls (default: train flowers-small)")
    parser.add_argument("--dataset", type=Path, help="default: the model's dataset")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "int8_fidelity")
    parser.add_argument("--schemes", default="portable", help="comma list of --int8-cpu classes to export")
    parser.add_argument("--no-emulate", dest="emulate", action="store_false")
    parser.add_argument("--no-latency", dest="latency", action="store_false")
    parser.add_argument("--no-onednn-cap", dest="onednn_cap", action="store_false",
                        help="skip the OpenVINO run with ONEDNN_MAX_CPU_ISA=AVX2")
    parser.add_argument("--reuse", action="store_true", help="keep artifacts exported by an earlier run in --work")
    parser.add_argument("--emulated-images", type=int, default=50,
                        help="evenly spaced photos for the emulated-CPU run (emulation is ~50x slower); 0: all")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    cli = [sys.executable, "-m", "edgecls.cli"]
    model = args.model or args.work / "model" / "model.keras"
    if not model.exists():
        subprocess.run([*cli, "train", str(args.assets / "data/flowers-small"), "--out", str(model.parent),
                        "--weights", str(args.assets / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"),
                        "--epochs", "8", "--fine-tune-epochs", "5", "--seed", "0"], check=True)
    manifest = load_manifest(model)
    dataset = args.dataset or Path(manifest.source["dataset"])
    schemes = [s for s in args.schemes.split(",") if s]
    artifacts: dict[str, Path] = {}
    for i, scheme in enumerate(schemes):
        out = args.work / f"export-{scheme}"
        quants = "fp32,int8" if i == 0 else "int8"
        if not (args.reuse and (out / "export_summary.json").exists()):
            subprocess.run([*cli, "export", str(model), "--format", ",".join(FORMATS), "--quant", quants, "--out", str(out),
                            "--int8-cpu", scheme, "--max-accuracy-drop", "100", "--dataset", str(dataset)], check=True)
        for r in json.loads((out / "export_summary.json").read_text())["artifacts"]:
            if r["passed"]:
                artifacts[f"{r['key']}" + (f" ({scheme})" if r["quant"] == "int8" else "")] = Path(r["path"])

    folder = data.scan(dataset)
    loaded = data.load_images(folder, range(len(folder.files)), manifest.preprocessing)
    images_path = args.work / "images.npy"
    np.save(images_path, loaded.images)
    from edgecls.keras_model import KerasScorer

    reference = KerasScorer(model).scores_resized(loaded.images)
    targets = data.label_indices(folder, manifest.labels)[loaded.targets]
    host = cpu_info()
    rows = []
    host_scores = {}
    subset = np.arange(len(targets))
    if 0 < args.emulated_images < len(targets):
        subset = np.linspace(0, len(targets) - 1, args.emulated_images).astype(int)
    np.save(args.work / "images_subset.npy", loaded.images[subset])
    for label, prefix, env, engines in cpu_runs(host["class"], args.emulate, args.onednn_cap):
        chosen = {k: p for k, p in artifacts.items() if k.split(":")[0] in engines and (not prefix and not env or "int8" in k)}
        out = args.work / f"scores-{len(rows)}.npz"
        started = time.time()
        pick = subset if prefix else np.arange(len(targets))
        subprocess.run([*prefix, sys.executable, __file__, "--worker",
                        str(args.work / "images_subset.npy" if prefix else images_path), str(out),
                        *map(str, chosen.values())], check=True, env={**os.environ, **env},
                       stderr=subprocess.DEVNULL if prefix else None)
        got = np.load(out)
        for i, (key, path) in enumerate(chosen.items()):
            probs = got[f"a{i}"]
            stats = compare(reference[pick], probs, targets[pick], len(pick))
            if not prefix and not env:
                host_scores[key] = probs
            base = host_scores[key][pick] if key in host_scores else None
            same_as_host = float(np.mean(probs.argmax(1) == base.argmax(1))) if base is not None else None
            diff_from_host = float(np.abs(probs - base).max()) if base is not None else None
            rows.append({"artifact": key, "cpu": label, **{k: stats[k] for k in (
                "count", "accuracy", "reference_accuracy", "accuracy_drop_pp", "top1_agreement", "agreement_ci95",
                "max_prob_diff")}, "agreement_with_host_run": same_as_host, "max_diff_from_host_run": diff_from_host})
            r = rows[-1]
            print(f"{key:<26} {label:<34} acc {r['accuracy']:.4f} (Keras {r['reference_accuracy']:.4f}, "
                  f"{-r['accuracy_drop_pp']:+.2f} pp) agreement {r['top1_agreement']:.4f} "
                  f"[{r['agreement_ci95'][0]:.3f}, {r['agreement_ci95'][1]:.3f}] max|dp| {r['max_prob_diff']:.3f}"
                  + (f" same-as-host {same_as_host:.4f} (max|dp| {diff_from_host:.3f})"
                     if same_as_host is not None and (prefix or env) else ""),
                  flush=True)
        print(f"  ({label}: {time.time() - started:.0f} s)", flush=True)

    latency = {}
    if args.latency:
        from edgecls.bench import bench_artifact

        for key, path in artifacts.items():
            res = bench_artifact(path, engine_options={"num_threads": 2}, batch=1, min_runs=50, min_seconds=2.0)
            latency[key] = res["latency_ms"]["p50"]
        for fmt in FORMATS:
            for key in [k for k in artifacts if k.startswith(f"{fmt}:int8")]:
                ratio = latency[key] / latency[f"{fmt}:fp32"]
                print(f"{key:<26} p50 {latency[key]:.2f} ms vs fp32 {latency[f'{fmt}:fp32']:.2f} ms: {ratio:.2f}x")
    result = {"host_cpu": host, "model": str(model), "dataset": str(dataset), "count": int(len(targets)),
              "rows": rows, "p50_ms": latency}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "int8_fidelity.json", json.dumps(result, indent=2) + "\n")
    lines = [f"# int8 fidelity on {len(targets)} photos ({dataset.name})", "",
             f"Host: {host['model']} ({host['class']}: {', '.join(host['features'])}). "
             "Command: `python bench/int8_fidelity.py " + " ".join(sys.argv[1:]) + "`", "",
             "| artifact | CPU | photos | accuracy | Keras | Δ pp | agreement [95% CI] | max abs dp vs Keras | "
             "same answer as host run | max abs dp vs host run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        host_run = r["cpu"].startswith("host")
        same = f"{r['agreement_with_host_run']:.4f}" if not host_run else "-"
        diff = f"{r['max_diff_from_host_run']:.3f}" if not host_run else "-"
        lines.append(f"| {r['artifact']} | {r['cpu']} | {r['count']} | {r['accuracy']:.4f} | {r['reference_accuracy']:.4f} | "
                     f"{-r['accuracy_drop_pp']:+.2f} | {r['top1_agreement']:.4f} [{r['agreement_ci95'][0]:.3f}, "
                     f"{r['agreement_ci95'][1]:.3f}] | {r['max_prob_diff']:.3f} | {same} | {diff} |")
    if latency:
        lines += ["", "| artifact | p50 ms (batch 1, 2 threads, host) |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in latency.items()]
    atomic_write_text(args.out / "int8_fidelity.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
