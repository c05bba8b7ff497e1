"""Accuracy by cross-validation on flowers-small: frozen linear probe vs the old and the new default
recipe, and balanced accuracy on an imbalanced subset with and without the imbalance options.

    python bench/accuracy.py                      # 5 folds at 224 px (the default size): ~15 min on 2 cores
    python bench/accuracy.py --probe-only         # the cached-feature rows only: about a minute
    python bench/accuracy.py --size 96            # smaller inputs: faster, less accurate

Every row uses the same stratified folds (seed 0). The probe computes backbone features once and
fits a logistic regression per fold; the recipes train through `edgecls.train` per fold (with
fold=[k, i]). Old default = the foundation's TrainConfig (10 + 5 epochs, Adam 1e-3 / 1e-4,
dropout 0.2, flip/rotate/zoom/contrast); new default = TrainConfig() as it is now.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMBALANCED = {"daisy": 40, "dandelion": 40, "roses": 40, "sunflowers": 10, "tulips": 5}
OLD_DEFAULT = dict(epochs=10, fine_tune_epochs=5, batch_size=32, learning_rate=1e-3, fine_tune_learning_rate=1e-4,
                   dropout=0.2, patience=3, augment=True, flip=True)


def assets() -> Path:
    env = os.environ.get("EDGECLS_ASSETS")
    for c in ([Path(env)] if env else []) + [ROOT.parent / "shared"]:
        if (c / "README.md").exists():
            return c
    sys.exit("shared assets not found: set EDGECLS_ASSETS or put shared/ beside the checkout")


def imbalanced_subset(flowers: Path, root: Path) -> Path:
    for name, n in IMBALANCED.items():
        (root / name).mkdir(parents=True)
        for photo in sorted((flowers / name).iterdir())[:n]:
            shutil.copy(photo, root / name / photo.name)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--probe-only", action="store_true", help="skip the trained recipes")
    ap.add_argument("--out", type=Path, default=None, help="keep per-fold models and tables here")
    ap.add_argument("--rows", default="old,new,imbalanced,oversample,class-weights",
                    help="trained rows to run (comma list of old, new, imbalanced, oversample, class-weights)")
    args = ap.parse_args()

    import dataclasses

    from rich.console import Console

    from edgecls.cv import cross_validate, probe_cv, probe_features
    from edgecls.train import TrainConfig

    shared = assets()
    flowers = shared / "data" / "flowers-small"
    weights = str(shared / "models" / "keras" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    size = (args.size, args.size)
    quiet = Console(file=open(os.devnull, "w"))
    work = Path(tempfile.mkdtemp(prefix="edgecls-accuracy-"))
    out = args.out or work
    rows: list[tuple] = []

    def record(dataset: str, name: str, result, started: float) -> None:
        s = result.summary
        rows.append((dataset, name, f"{s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}",
                     f"{s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f}",
                     f"{s['balanced_accuracy']['mean']:.3f} ± {s['balanced_accuracy']['std']:.3f}",
                     time.perf_counter() - started))
        print(f"{dataset:<22} {name:<34} acc {rows[-1][2]}  macro F1 {rows[-1][3]}  bal acc {rows[-1][4]}  "
              f"({rows[-1][5]:.0f} s)", flush=True)

    try:
        sub = imbalanced_subset(flowers, work / "imbalanced")
        for label, data in (("flowers-small", flowers), ("imbalanced 40/40/40/10/5", sub)):
            t = time.perf_counter()
            feats, targets, labels = probe_features(data, "mobilenet_v2", weights, size)
            record(label, "linear probe (frozen)", probe_cv(feats, targets, labels, args.folds, 0), t)
            if data is sub:
                t = time.perf_counter()
                record(label, "linear probe, class_weight=balanced",
                       probe_cv(feats, targets, labels, args.folds, 0, class_weight="balanced"), t)
        if not args.probe_only:
            base = dict(weights=weights, input_size=size, seed=0)
            old, new = TrainConfig(**base, **OLD_DEFAULT), TrainConfig(**base)
            wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
            if "new" in wanted and new == old:
                print("new default = old default (TrainConfig's defaults are unchanged): one row for both", flush=True)
                wanted.discard("new")
            runs = [("old", "flowers-small", flowers, "old default", old),
                    ("new", "flowers-small", flowers, "new default", new),
                    ("imbalanced", "imbalanced 40/40/40/10/5", sub, "default", new),
                    ("oversample", "imbalanced 40/40/40/10/5", sub, "default + oversample",
                     dataclasses.replace(new, oversample=True)),
                    ("class-weights", "imbalanced 40/40/40/10/5", sub, "default + class weights",
                     dataclasses.replace(new, class_weights=True))]
            for key, label, data, name, config in runs:
                if key not in wanted:
                    continue
                t = time.perf_counter()
                where = out / f"{label.split()[0]}-{name.replace(' ', '_').replace('+', 'plus')}"
                record(label, name, cross_validate(data, where, config, args.folds, console=quiet, name=name), t)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.folds}-fold stratified CV (seed 0), MobileNetV2 ImageNet weights at {args.size} px\n")
    print("| dataset | recipe | accuracy | macro F1 | balanced accuracy | s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.0f} |")


if __name__ == "__main__":
    main()
