"""An ensemble against its members by k-fold cross-validation (flowers-small by default).

For every fold the members (a recipe at an input size each) are trained on the fold's training
images, `edgecls.ensemble.build_ensemble` averages them into one Keras model,
and the ensemble and each member are scored on the fold's validation images (the split the
members recorded). Prints per-fold accuracies and mean ± std per model.

    python bench/ensemble_cv.py [--dataset DIR] [--members 224:default,224:finetune] [--folds 5]

Recipes: `default` = TrainConfig() (logistic head on frozen features, crop views); `finetune` =
a gradient-trained head then 5 epochs of fine-tuning (the foundation's recipe, bench/accuracy.py's
"old default"). Members at several sizes of one recipe are the cheapest ensemble; two recipes at
one size make errors less alike.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


RECIPES = {"default": {},
           "finetune": dict(feature_head=False, epochs=10, fine_tune_epochs=5, learning_rate=1e-3,
                            fine_tune_learning_rate=1e-4, dropout=0.2, patience=3)}


def main() -> None:
    shared = Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(shared / "data" / "flowers-small"))
    ap.add_argument("--weights", default=str(shared / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    ap.add_argument("--members", default="224:default,224:finetune", help="comma list of SIZE:RECIPE")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="fold assignment and training seed")
    args = ap.parse_args()
    try:
        members_spec = [(int(m.split(":")[0]), m.split(":")[1]) for m in args.members.split(",") if m.strip()]
    except (ValueError, IndexError):
        ap.error("--members: expected SIZE:RECIPE items such as 224:default,160:default")
    if len(members_spec) < 2 or args.folds < 2 or min(s for s, _ in members_spec) < 32 or \
            any(r not in RECIPES for _, r in members_spec):
        ap.error(f"--members needs at least two SIZE:RECIPE (size >= 32, recipe one of {', '.join(RECIPES)}); "
                 "--folds at least 2")

    from rich.console import Console

    from edgecls.ensemble import build_ensemble
    from edgecls.train import TrainConfig, train

    quiet = Console(file=open(os.devnull, "w"))
    work = Path(tempfile.mkdtemp(prefix="edgecls-ensemble-cv-"))
    names = ["ensemble"] + [f"{s} px {r}" for s, r in members_spec]
    scores: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter()
    try:
        for fold in range(args.folds):
            members = []
            for size, recipe in members_spec:
                config = TrainConfig(weights=args.weights, input_size=(size, size), seed=args.seed,
                                     fold=[args.folds, fold], **RECIPES[recipe])
                where = work / f"fold{fold}" / f"{size}px-{recipe}"
                members.append(train(args.dataset, where, config, console=quiet).model_path)
            result = build_ensemble(members, work / f"fold{fold}" / "ensemble", args.dataset)
            m = result.metrics
            scores["ensemble"].append(m["ensemble"]["accuracy"])
            for i, name in enumerate(names[1:]):
                scores[name].append(m[f"member_{i}"]["accuracy"])
            print(f"fold {fold}: " + "  ".join(f"{n} {scores[n][-1]:.3f}" for n in names)
                  + f"  ({m['count']} photos, {time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.folds}-fold CV (seed {args.seed}) on {args.dataset}; members: {', '.join(names[1:])}; "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| model | accuracy (mean ± std) | per fold |")
    print("| --- | ---: | --- |")
    for n in names:
        v = np.asarray(scores[n])
        print(f"| {n} | {v.mean():.3f} ± {v.std():.3f} | {' '.join(f'{x:.3f}' for x in v)} |")
    best = max(names[1:], key=lambda n: np.mean(scores[n]))
    diff = np.asarray(scores["ensemble"]) - np.asarray(scores[best])
    print(f"\nensemble - best member ({best}): {100 * diff.mean():+.1f} points "
          f"(per fold {' '.join(f'{100 * d:+.1f}' for d in diff)})")


if __name__ == "__main__":
    main()
