"""edgecls end to end vs the frozen linear probe (bench/linear_probe.py) on a train/test split:
`edgecls train` (the default recipe, and each --variant given), `edgecls export --quant fp32,int8`
(TFLite), every artifact scored on the test folder through the edgecls runtime (what `edgecls
evaluate --split all` and `edgecls predict` run), paired with the probe's answers on the same photos.

    python bench/linear_probe.py TRAIN TEST --out probe.json
    python bench/probe_compare.py TRAIN TEST --probe probe.json --work /tmp/runs \
        --variant default= --variant refit-all=--refit-all --variant stretch=--resize,stretch

Prints a Markdown table: accuracy (Wilson 95%) and, per probe mode, the paired difference
(95% interval, McNemar p, photos only edgecls / only the probe got right).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecls import data as data_mod  # noqa: E402
from edgecls.evaluate import paired_difference, wilson_interval  # noqa: E402

WEIGHTS = "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


def cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print("$ edgecls " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "edgecls.cli", *args], check=True, env=env)


def score(artifact: Path, test: Path) -> dict[str, str]:
    """Each test photo's top-1 label through the edgecls runtime."""
    from edgecls.runtime import Classifier

    clf = Classifier.from_artifact(artifact)
    folder = data_mod.scan(test)
    return {f.relative_to(test).as_posix(): clf.predict(f, 1)[0][0] for f in folder.files}


def cell(correct: np.ndarray) -> str:
    lo, hi = wilson_interval(int(correct.sum()), len(correct))
    return f"{correct.mean():.3f} ({lo:.3f}-{hi:.3f})"


def paired(a: np.ndarray, b: np.ndarray) -> str:
    d = paired_difference(a, b)
    return f"{d['difference']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}; p={d['p_value']:.2g}; {d['a_only']}/{d['b_only']})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", type=Path)
    ap.add_argument("test", type=Path)
    ap.add_argument("--probe", type=Path, required=True, help="bench/linear_probe.py --out JSON")
    ap.add_argument("--work", type=Path, required=True, help="folder for the runs (reused when finished)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=comma-separated extra train options (NAME= for the default recipe)")
    ap.add_argument("--train-option", action="append", default=[], help="extra option for every train")
    args = ap.parse_args()
    assets = Path(os.environ.get("EDGECLS_ASSETS") or ROOT.parent / "shared")
    probe = json.loads(args.probe.read_text())
    truth = {f.relative_to(args.test).as_posix(): args.test.joinpath(f.relative_to(args.test)).parent.name
             for f in data_mod.scan(args.test).files}
    names = sorted(truth)
    rows = []
    for variant in args.variant or ["default="]:
        name, _, extra = variant.partition("=")
        run = args.work / name
        start = time.time()
        if not (run / "model.keras.json").exists():
            cli("train", str(args.train), "--out", str(run), "--weights", str(assets / WEIGHTS),
                *[x for x in extra.split(",") if x], *args.train_option)
        if not (run / "export" / "model_int8.tflite").exists():
            # No gate here: int8 fidelity is measured, not filtered (the default gate's verdict is in the log).
            cli("export", str(run / "model.keras"), "--format", "tflite", "--quant", "fp32,int8",
                "--max-accuracy-drop", "100")
        manifest = json.loads((run / "model.keras.json").read_text())
        for artifact in sorted((run / "export").glob("*.tflite")):
            answers = score(artifact, args.test)
            right = np.asarray([answers[n] == truth[n] for n in names])
            row = {"variant": name, "artifact": artifact.name, "resize": manifest["preprocessing"]["resize"],
                   "estimate": manifest["verification"], "accuracy": cell(right), "right": right}
            for mode, result in probe["modes"].items():
                row[mode] = paired(right, np.asarray([result["answers"][n] == truth[n] for n in names]))
            rows.append(row)
        print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)
    modes = list(probe["modes"])
    print(f"\n{args.test}: {len(names)} photos; train {args.train}\n")
    print("| edgecls run | resize | artifact | accuracy (Wilson 95%) | training estimate | "
          + " | ".join(f"edgecls - probe {m} (paired)" for m in modes) + " |")
    print("|---|---|---|---|---|" + "---|" * len(modes))
    for mode, result in probe["modes"].items():
        right = np.asarray([result["answers"][n] == truth[n] for n in names])
        print(f"| linear probe (bench/linear_probe.py) | {mode} | - | {cell(right)} | - |" + " |" * len(modes))
    for r in rows:
        e = r["estimate"]
        est = (f"{e['cv_count']}-photo CV {e['cv_accuracy']:.3f}" if "cv_accuracy" in e
               else f"{e.get('val_count')}-photo val {e.get('val_accuracy', float('nan')):.3f}")
        print(f"| {r['variant']} | {r['resize']} | {r['artifact']} | {r['accuracy']} | {est} | "
              + " | ".join(r[m] for m in modes) + " |")
    fp32 = {r["variant"]: r["right"] for r in rows if "fp32" in r["artifact"]}
    for r in rows:
        if "int8" in r["artifact"] and r["variant"] in fp32:
            print(f"\n- {r['variant']}: int8 - fp32 {paired(r['right'], fp32[r['variant']])}", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
