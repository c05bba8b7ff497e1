"""edgecls as a new user runs it, scored on photos nothing in the pipeline saw (issue 24).

For each DATA folder (image folders DATA/train/ and DATA/test/, or val/ or validation/ for the
held-out part): `edgecls train DATA/train` with the recipe's defaults (the shared MobileNetV2
ImageNet weights), `edgecls export --format tflite,onnx,openvino --quant fp32,int8` without the
gate (every artifact is measured, none filtered), then every artifact and the Keras model answer
each held-out photo through the device runtime (what `edgecls evaluate` runs). Beside it the plain
probe of `bench/linear_probe.py` (no edgecls: PIL, Keras, scikit-learn). Training, calibration and
the export's gate see DATA/train only.

One row per dataset x artifact: accuracy with its 95% Wilson interval, top-1 agreement with the
Keras model (Wilson interval), and paired differences (Agresti-Min 95% interval, McNemar exact
p) against the Keras model and against the probe, on the same photos. The training's fine-tuning
decision and wall times are reported per dataset.

    python bench/heldout_matrix.py DATA [DATA ...] --work DIR [--tag after] [--checkout DIR]

`--checkout DIR` runs another edgecls checkout (its package on PYTHONPATH, this interpreter) for a
before/after comparison. Writes bench/results/heldout_matrix_TAG.{json,md}; work is cached in DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ("test", "val", "validation")
ARTIFACTS = ("keras", "tflite:fp32", "tflite:int8", "tflite:mixed", "onnx:int8", "openvino:int8")
WEIGHTS = "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


def assets() -> Path:
    path = Path(os.environ.get("EDGECLS_ASSETS") or ROOT.parent / "shared")
    if not (path / WEIGHTS).is_file():
        sys.exit(f"{path / WEIGHTS}: shared assets not found; set EDGECLS_ASSETS")
    return path


def run(cmd: list[str], checkout: Path, log: Path) -> float:
    """Run an edgecls step with `checkout` on the path, its output to `log`; its wall time."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=checkout)
    if proc.returncode not in (0, 1):  # export exits 1 when an artifact failed: measured all the same
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - started


def score_worker(model: str, test: str, out: str) -> None:
    """--score: each held-out photo's top-1 through the runtime (or the Keras model)."""
    import numpy as np

    from edgecls import data

    folder = data.scan(test)
    if model.endswith(".keras"):
        from edgecls.keras_model import KerasScorer

        scorer = KerasScorer(model)
        labels, preprocessing = scorer.manifest.labels, scorer.manifest.preprocessing
        loaded = data.load_images(folder, range(len(folder.files)), preprocessing)
        probs = scorer.scores_resized(loaded.images)
    else:
        from edgecls.runtime import Classifier

        clf = Classifier.from_artifact(model)
        labels, preprocessing = clf.labels, clf.preprocessing
        loaded = data.load_images(folder, range(len(folder.files)), preprocessing)
        probs = clf.scores(loaded.images)
    if folder.classes != list(labels):
        sys.exit(f"{test}: classes {folder.classes} differ from the model's {labels}")
    names = [str(Path(f).relative_to(test)) for f in loaded.files]
    Path(out).write_text(json.dumps({"files": names, "predicted": np.asarray(probs).argmax(1).tolist(),
                                     "truth": loaded.targets.tolist()}))


def dataset(root: Path, work: Path, checkout: Path, python: str, mixed_too: bool) -> dict:
    held = next((root / h for h in HELD_OUT if (root / h).is_dir()), None)
    if held is None or not (root / "train").is_dir():
        sys.exit(f"{root}: expected train/ and one of {', '.join(HELD_OUT)}/")
    name, shared = root.name, assets()
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").exists() else {}
    probe = out / "probe.json"
    if not probe.exists():
        times["probe"] = run([python, str(ROOT / "bench" / "linear_probe.py"), str(root / "train"), str(held),
                              "--modes", "crop", "--out", str(probe)], ROOT, out / "probe.log")
    model = out / "model" / "model.keras"
    if not model.exists():
        times["train"] = run([python, "-m", "edgecls.cli", "train", str(root / "train"), "--weights",
                              str(shared / WEIGHTS), "--out", str(out / "model")], checkout, out / "train.log")
    export = out / "export"
    if not (export / "export_summary.json").exists():
        times["export"] = run([python, "-m", "edgecls.cli", "export", str(model), "--format", "tflite,onnx,openvino",
                               "--quant", "fp32,int8", "--max-accuracy-drop", "100", "--out", str(export)],
                              checkout, out / "export.log")
    mixed = export / "model_int8_mixed.tflite"
    if mixed_too and not mixed.exists():
        times["export_mixed"] = run([python, "-m", "edgecls.cli", "export", str(model), "--format", "tflite", "--quant",
                                     "mixed", "--max-accuracy-drop", "100", "--out", str(export / "mixed")],
                                    checkout, out / "export_mixed.log")
        for made in (export / "mixed").glob("model_int8_mixed*"):
            made.replace(export / made.name)
    (out / "times.json").write_text(json.dumps(times))
    answers = {}
    for key in ARTIFACTS:
        tag = {"mixed": "int8_mixed"}.get(key.split(":")[1], key.split(":")[1])
        path = model if key == "keras" else export / f"model_{tag}.{_suffix(key)}"
        cached = out / f"answers_{key.replace(':', '_')}.json"
        if path.exists() and not cached.exists():
            run([python, str(Path(__file__).resolve()), "--score", str(path), str(held), str(cached)], checkout,
                out / "score.log")
        if cached.exists():
            answers[key] = json.loads(cached.read_text())
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    return {"dataset": name, "held_out": str(held), "answers": answers, "probe": json.loads(probe.read_text()),
            "times": times, "decision": metrics.get("fine_tune_decision"),
            "train_count": metrics["train"]["count"] if "count" in metrics["train"] else None}


def _suffix(key: str) -> str:
    return {"tflite": "tflite", "onnx": "onnx", "openvino": "xml"}[key.split(":")[0]]


def rows(result: dict) -> list[dict]:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from edgecls.evaluate import paired_difference, wilson_interval

    keras = result["answers"]["keras"]
    truth = np.asarray(keras["truth"])
    reference = np.asarray(keras["predicted"])
    probe_answers = result["probe"]["modes"]["crop"]["answers"]
    classes = result["probe"]["classes"]
    probe = np.asarray([classes.index(probe_answers[f]) for f in keras["files"]])
    probe_right = probe == truth
    out = [{"dataset": result["dataset"], "artifact": "probe", "count": len(truth),
            "accuracy": float(probe_right.mean()), "ci95": wilson_interval(int(probe_right.sum()), len(truth))}]
    for key, answers in result["answers"].items():
        if answers["files"] != keras["files"]:
            sys.exit(f"{result['dataset']} {key}: scored other photos than the Keras model")
        predicted = np.asarray(answers["predicted"])
        right = predicted == truth
        agree = predicted == reference
        out.append({"dataset": result["dataset"], "artifact": key, "count": len(truth), "accuracy": float(right.mean()),
                    "ci95": wilson_interval(int(right.sum()), len(truth)), "agreement": float(agree.mean()),
                    "agreement_ci95": wilson_interval(int(agree.sum()), len(truth)),
                    "vs_keras": paired_difference(right, reference == truth),
                    "vs_probe": paired_difference(right, probe_right)})
    return out


def paired(d: dict | None) -> str:
    if d is None:
        return "-"
    return f"{d['difference'] * 100:+.1f} [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}] p={d['p_value']:.2g}"


def markdown(results: list[dict], table: list[dict], tag: str, checkout: Path) -> str:
    lines = [f"# Held-out matrix ({tag})", "",
             f"edgecls checkout: `{checkout}`; host: {os.uname().machine}, {os.cpu_count()} cores. "
             "Accuracy and agreement with 95% Wilson intervals; paired differences in points with the "
             "Agresti-Min 95% interval and McNemar's exact p, on the same held-out photos.", "",
             "| dataset | artifact | photos | accuracy [95% CI] | agreement with Keras [95% CI] | vs Keras (pp) | vs probe (pp) |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        agreement = (f"{r['agreement']:.4f} [{r['agreement_ci95'][0]:.3f}, {r['agreement_ci95'][1]:.3f}]"
                     if "agreement" in r else "-")
        lines.append(f"| {r['dataset']} | {r['artifact']} | {r['count']} | {r['accuracy']:.4f} "
                     f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {agreement} | {paired(r.get('vs_keras'))} | "
                     f"{paired(r.get('vs_probe'))} |")
    lines += ["", "| dataset | training photos | fine-tuning decision | train s | export s |", "|---|---|---|---|---|"]
    for res in results:
        d = res["decision"] or {}
        said = d.get("decision", "not recorded (count rule)")
        if d.get("gain") is not None:
            said += (f": head {d['feature_head']['accuracy']:.3f}, fine-tuned {d['fine_tuned']['accuracy']:.3f}, "
                     f"gain {d['gain'] * 100:+.1f} (SE {d['gain_se'] * 100:.1f}) on {d['validation_count']} val photos")
        lines.append(f"| {res['dataset']} | {res['train_count']} | {said} | {res['times'].get('train', 0):.0f} | "
                     f"{res['times'].get('export', 0):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--score":
        score_worker(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tag", default="after")
    ap.add_argument("--checkout", type=Path, default=ROOT)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--mixed", action="store_true", help="also export and score the mixed LiteRT artifact")
    args = ap.parse_args()
    results = [dataset(d.resolve(), args.work.resolve(), args.checkout.resolve(), sys.executable, args.mixed)
               for d in args.data]
    table = [r for res in results for r in rows(res)]
    stem = args.results / f"heldout_matrix_{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps({"checkout": str(args.checkout), "rows": table,
                                                     "datasets": [{k: v for k, v in r.items() if k != "answers"}
                                                                  for r in results]}, indent=1, default=list))
    text = markdown(results, table, args.tag, args.checkout)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
