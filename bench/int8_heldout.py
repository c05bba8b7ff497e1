"""int8 fidelity on photos that neither training, calibration nor the export gate saw.

`bench/int8_fidelity.py` scores every photo of a dataset, including those the model trained on
and the int8 calibration and the export gate used; this script holds photos out of all three:

- the repository's flowers-small (and any `--dataset` without a train/ folder): k-fold; for each
  fold a dataset of symbolic links to the other k-1 folds is trained on (default recipe: the
  logistic feature head on frozen MobileNetV2 features), exported (calibration and the gate use
  that dataset only) and the fold's photos are scored;
- a `--dataset` with train/ and val/, validation/ or test/ folders: trained and exported on
  train/, scored on the others together.

Each int8 artifact is compared with the Keras model on the held-out photos: top-1 agreement with
its 95% Wilson interval, accuracy and its drop in points, pooled over the folds of a dataset; on
the host, with OpenVINO's oneDNN capped at AVX2 and (a subset, emulation is ~50x slower) under
`qemu-x86_64 -cpu Haswell-v4`, where "same as host" says whether the answers are identical.
Models, held-out photos, exports and scores are cached in --work between runs.

    python bench/int8_heldout.py [--dataset DIR ...] [--folds 5] [--variant NAME -- EXPORT OPTIONS]

Writes bench/results/int8_heldout[_VARIANT].{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
QEMU_AVX2 = ["qemu-x86_64", "-cpu", "Haswell-v4"]
FORMATS = ("tflite", "onnx", "openvino")
HELD_OUT_SPLITS = ("val", "validation", "test")
WORKER = ROOT / "bench" / "int8_fidelity.py"  # its --worker scores images through the device runtime


@dataclass
class Task:
    """One trained model and the photos held out from it."""

    dataset: str          # the name the table reports
    name: str             # dataset/fold, the cache folder
    train_dir: Path       # what training, calibration and the gate see
    held_out: list[Path]  # photo files
    labels: list[str]
    targets: list[int]    # index into `labels` per held-out photo


def fold_tasks(root: Path, folds: int, work: Path, seed: int = 0) -> list[Task]:
    """k-fold: for each fold, a dataset of links to the other folds' photos, and the fold's photos."""
    from edgecls import data

    folder = data.scan(root)
    tasks = []
    for i in range(folds):
        split = data.fold_indices(folder.targets, folds, i, seed)
        train_dir = work / root.name / f"fold{i}" / "data"
        if not train_dir.exists():
            staging = train_dir.with_name("data.partial")
            shutil.rmtree(staging, ignore_errors=True)
            for j in split["train"]:
                src = folder.files[j]
                dst = staging / folder.classes[folder.targets[j]] / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src.resolve())
            staging.rename(train_dir)
        tasks.append(Task(root.name, f"{root.name}/fold{i}", train_dir, [folder.files[j] for j in split["val"]],
                          list(folder.classes), [int(folder.targets[j]) for j in split["val"]]))
    return tasks


def split_task(root: Path) -> Task:
    """train/ against the held-out split folders beside it."""
    from edgecls import data

    train = data.scan(root / "train")
    files, targets = [], []
    for name in HELD_OUT_SPLITS:
        if (root / name).is_dir():
            held = data.scan(root / name)
            if held.classes != train.classes:
                raise SystemExit(f"{root / name}: classes {held.classes} differ from train/'s {train.classes}")
            files += held.files
            targets += [int(t) for t in held.targets]
    if not files:
        raise SystemExit(f"{root}: has train/ but no {', '.join(HELD_OUT_SPLITS)} folder to hold out")
    return Task(root.name, root.name, root / "train", files, list(train.classes), targets)


def tasks_for(root: Path, folds: int, work: Path) -> list[Task]:
    return [split_task(root)] if (root / "train").is_dir() else fold_tasks(root, folds, work)


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "edgecls.cli", *map(str, args)], check=True, cwd=ROOT)


def train(task: Task, work: Path, weights: Path) -> Path:
    """The default recipe (feature head on frozen MobileNetV2 features at 224), trained once."""
    model = work / task.name / "model" / "model.keras"
    if not model.exists():
        # No fine-tuning, whatever the set's size: the recipe every small set gets (and what the
        # frozen backbone's int8 numerics are measured on).
        cli("train", task.train_dir, "--out", model.parent, "--weights", weights, "--fine-tune-epochs", "0",
            "--seed", "0")
    return model


def held_out_images(task: Task, model: Path, work: Path) -> Path:
    """The held-out photos resized by the model's preprocessing and the Keras model's scores (cached)."""
    import numpy as np

    path = work / task.name / "held_out.npz"
    if not path.exists():
        from edgecls.keras_model import KerasScorer
        from edgecls.manifest import load_manifest

        manifest = load_manifest(model)
        if manifest.labels != task.labels:
            raise SystemExit(f"{model}: labels {manifest.labels} differ from the held-out photos' {task.labels}")
        images = np.stack([manifest.preprocessing.load(p) for p in task.held_out])
        reference = KerasScorer(model).scores_resized(images)
        np.savez(path.with_suffix(".partial.npz"), images=images, targets=np.asarray(task.targets), reference=reference)
        path.with_suffix(".partial.npz").rename(path)
    return path


def export(task: Task, model: Path, work: Path, variant: str, export_args: list[str]) -> dict[str, Path]:
    """fp32 and int8 in every format, no gate (every artifact is judged here), cached per variant."""
    out = work / task.name / f"export-{variant}"
    if not (out / "export_summary.json").exists():
        cli("export", model, "--format", ",".join(FORMATS), "--quant", "fp32,int8", "--out", out,
            "--max-accuracy-drop", "100", *export_args)
    summary = json.loads((out / "export_summary.json").read_text())
    failed = [f"{r['key']}: {r['error']}" for r in summary["artifacts"] if not r["passed"]]
    if failed:
        raise SystemExit(f"{out}: " + "; ".join(failed))
    return {r["key"]: Path(r["path"]) for r in summary["artifacts"]}


def cpu_runs(host_class: str, emulate: bool) -> list[tuple[str, list[str], dict[str, str], tuple[str, ...]]]:
    """(label, command prefix, environment, formats) per CPU class measured."""
    runs = [(f"host ({host_class})", [], {}, FORMATS)]
    if host_class == "x86-vnni":
        runs.append(("OpenVINO, oneDNN capped at AVX2", [], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, ("openvino",)))
        if emulate and shutil.which(QEMU_AVX2[0]):
            runs.append(("x86-avx2 (qemu Haswell-v4)", QEMU_AVX2, {"EDGECLS_CPU_FEATURES": "avx2"}, FORMATS))
        elif emulate:
            print("qemu-x86_64 not found (apt-get install qemu-user): no emulated AVX2 run", file=sys.stderr)
    return runs


def scores(images: Path, artifacts: dict[str, Path], out: Path, prefix: list[str], env: dict[str, str],
           pick=None) -> dict:
    """Probabilities per artifact key from the device runtime in a subprocess (cached in `out`)."""
    import numpy as np

    if not out.exists():
        src = out.with_name(out.stem + "_images.npy")
        held = np.load(images)["images"]
        np.save(src, held if pick is None else held[pick])
        partial = out.with_name(out.stem + ".partial.npz")
        subprocess.run([*prefix, sys.executable, str(WORKER), "--worker", str(src), str(partial),
                        *map(str, artifacts.values())], check=True, env={**os.environ, **env},
                       stderr=subprocess.DEVNULL if prefix else None)
        partial.rename(out)
        src.unlink()
    got = np.load(out)
    return {key: got[f"a{i}"] for i, key in enumerate(artifacts)}


def measure(task: Task, work: Path, weights: Path, variant: str, export_args: list[str], host_class: str,
            emulate: bool, emulated: int) -> list[dict]:
    """Per (artifact, CPU run): the held-out probabilities against Keras's, and the host run's."""
    import numpy as np

    model = train(task, work, weights)
    images = held_out_images(task, model, work)
    artifacts = export(task, model, work, variant, export_args)
    held = np.load(images)
    reference, targets = held["reference"], held["targets"]
    rows, host = [], {}
    for label, prefix, env, formats in cpu_runs(host_class, emulate):
        chosen = {k: p for k, p in artifacts.items() if k.split(":")[0] in formats and (k.endswith("int8") or not
                                                                                        (prefix or env))}
        # Evenly spaced photos under emulation; every photo natively.
        pick = np.linspace(0, len(targets) - 1, min(emulated, len(targets))).astype(int) if prefix else None
        tag = "host" if not (prefix or env) else ("qemu" if prefix else "onednn-avx2")
        got = scores(images, chosen, work / task.name / f"scores-{variant}-{tag}.npz", prefix, env, pick)
        sel = np.arange(len(targets)) if pick is None else pick
        for key, probs in got.items():
            if tag == "host":
                host[key] = probs
            rows.append({"dataset": task.dataset, "task": task.name, "artifact": key, "cpu": label,
                         "reference": reference[sel], "probs": probs, "targets": targets[sel],
                         "host": None if tag == "host" else host[key][sel]})
    return rows


def pooled(rows: list[dict]) -> list[dict]:
    """One line per (dataset, artifact, CPU): folds pooled."""
    import numpy as np

    from edgecls.evaluate import wilson_interval

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["artifact"], r["cpu"]), []).append(r)
    out = []
    for (dataset, artifact, cpu), parts in groups.items():
        ref = np.concatenate([p["reference"] for p in parts])
        probs = np.concatenate([p["probs"] for p in parts])
        targets = np.concatenate([p["targets"] for p in parts])
        same = probs.argmax(1) == ref.argmax(1)
        lo, hi = wilson_interval(int(same.sum()), len(same))
        line = {"dataset": dataset, "artifact": artifact, "cpu": cpu, "models": len(parts), "photos": int(len(same)),
                "agreement": float(same.mean()), "agreement_ci95": [round(lo, 4), round(hi, 4)],
                "disagreements": int((~same).sum()),
                "keras_accuracy": float(np.mean(ref.argmax(1) == targets)),
                "accuracy": float(np.mean(probs.argmax(1) == targets)),
                "max_abs_dp": float(np.abs(probs - ref).max()),
                "mean_abs_dp": float(np.abs(probs - ref).max(1).mean())}
        line["drop_pp"] = round((line["keras_accuracy"] - line["accuracy"]) * 100, 2)
        if parts[0]["host"] is not None:
            host = np.concatenate([p["host"] for p in parts])
            line["same_as_host"] = float(np.mean(probs.argmax(1) == host.argmax(1)))
            line["max_abs_dp_vs_host"] = float(np.abs(probs - host).max())
        out.append(line)
    return out


def latency(work: Path, variant: str, task: Task) -> dict[str, float]:
    """int8/fp32 p50 at batch 1, 2 threads, per engine, on one task's artifacts (`edgecls bench`'s code)."""
    from edgecls.bench import bench_artifact

    summary = json.loads((work / task.name / f"export-{variant}" / "export_summary.json").read_text())
    p50 = {}
    for r in summary["artifacts"]:
        res = bench_artifact(r["path"], engine_options={"num_threads": 2}, batch=1, min_runs=50, min_seconds=3.0)
        p50[r["key"]] = res["latency_ms"]["p50"]
    return p50


def table(lines: list[dict]) -> list[str]:
    md = ["| dataset | artifact | CPU | models | photos | agreement [95% CI] | flips | Keras acc | artifact acc | "
          "drop pp | max abs dp | same as host |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in lines:
        same = f"{r['same_as_host']:.4f} (max dp {r['max_abs_dp_vs_host']:.3f})" if "same_as_host" in r else "-"
        md.append(f"| {r['dataset']} | {r['artifact']} | {r['cpu']} | {r['models']} | {r['photos']} | "
                  f"{r['agreement']:.4f} [{r['agreement_ci95'][0]:.3f}, {r['agreement_ci95'][1]:.3f}] | "
                  f"{r['disagreements']} | {r['keras_accuracy']:.4f} | {r['accuracy']:.4f} | {r['drop_pp']:+.2f} | "
                  f"{r['max_abs_dp']:.3f} | {same} |")
    return md


def main() -> int:
    if "--" in sys.argv:
        cut = sys.argv.index("--")
        argv, export_args = sys.argv[1:cut], sys.argv[cut + 1:]
    else:
        argv, export_args = sys.argv[1:], []
    from edgecls.cpu import cpu_info
    from edgecls.files import atomic_write_text

    shared = Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, action="append", default=[],
                        help="more datasets (train/ + val|validation|test, or one folder per class: k-fold)")
    parser.add_argument("--no-flowers", dest="flowers", action="store_false",
                        help="leave out the repository's flowers-small")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--weights", type=Path,
                        default=shared / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    parser.add_argument("--variant", default="default", help="name of this export configuration (cache, results)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "int8_heldout")
    parser.add_argument("--no-emulate", dest="emulate", action="store_false")
    parser.add_argument("--emulated", type=int, default=24, help="photos per model under qemu (~50x slower)")
    parser.add_argument("--latency", action="store_true", help="int8/fp32 p50 per engine on the first model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    roots = ([shared / "data" / "flowers-small"] if args.flowers else []) + args.dataset
    host = cpu_info()
    rows, started = [], time.time()
    tasks = [t for root in roots for t in tasks_for(root.resolve(), args.folds, args.work)]
    for i, task in enumerate(tasks):
        print(f"[{i + 1}/{len(tasks)}] {task.name}: {len(task.held_out)} held-out photos "
              f"({time.time() - started:.0f} s)", flush=True)
        rows += measure(task, args.work, args.weights, args.variant, export_args, host["class"], args.emulate,
                        args.emulated)
    lines = pooled(rows)
    md = table(lines)
    print("\n".join(md))
    p50 = latency(args.work, args.variant, tasks[0]) if args.latency else {}
    ratios = {fmt: p50[f"{fmt}:int8"] / p50[f"{fmt}:fp32"] for fmt in FORMATS if f"{fmt}:int8" in p50}
    for fmt, ratio in ratios.items():
        print(f"{fmt}: int8 p50 {p50[f'{fmt}:int8']:.2f} ms, fp32 {p50[f'{fmt}:fp32']:.2f} ms: {ratio:.2f}x")
    command = "python bench/int8_heldout.py " + " ".join(sys.argv[1:])
    stem = "int8_heldout" + ("" if args.variant == "default" else f"_{args.variant}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{stem}.json", json.dumps(
        {"command": command, "host_cpu": host, "export_args": export_args, "rows": lines, "p50_ms": p50,
         "int8_over_fp32_p50": ratios}, indent=2) + "\n")
    text = [f"# int8 fidelity on held-out photos ({args.variant})", "",
            f"Host: {host['model']} ({host['class']}: {', '.join(host['features'])}).", "",
            f"Command: `{command}`", "", *md]
    if ratios:
        text += ["", "| engine | int8 p50 ms | fp32 p50 ms | int8/fp32 |", "|---|---|---|---|"]
        text += [f"| {f} | {p50[f'{f}:int8']:.2f} | {p50[f'{f}:fp32']:.2f} | {r:.2f} |" for f, r in ratios.items()]
    atomic_write_text(args.out / f"{stem}.md", "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
