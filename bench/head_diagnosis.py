"""Where edgecls's default recipe and the frozen linear probe part ways on a held-out set (issue 15):
the same MobileNetV2 features (edgecls preprocessing, cached by bench/resize_mode_cv.py) under
several heads, fitted on the pool and scored on the held-out photos, paired with the default head.

    python bench/head_diagnosis.py --datasets hymenoptera,clothing [--probe-features DIR]

Heads: the default (`train.logistic_head`: as-is, mirrored and four 0.8 corner-crop views, C by
picture-grouped inner CV), and logistic regression on fewer views / fixed C / standardised features.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import resize_mode_cv as rm  # noqa: E402

CROPS = ("top left 0.8", "top right 0.8", "bottom left 0.8", "bottom right 0.8")
HEADS = {  # name -> (views, C or None for inner CV, standardise)
    "default: 6 views, C by inner CV": (("as is", "mirrored", *CROPS), None, False),
    "6 views, C=1": (("as is", "mirrored", *CROPS), 1.0, False),
    "as is + mirrored, C by inner CV": (("as is", "mirrored"), None, False),
    "as is + mirrored, C=1": (("as is", "mirrored"), 1.0, False),
    "as is, C by inner CV": (("as is",), None, False),
    "as is, C=1 (the issue's probe head)": (("as is",), 1.0, False),
    "as is, standardised, C=1 (edgecls cv --probe)": (("as is",), 1.0, True),
}


def predict(views: dict[str, np.ndarray], y: np.ndarray, test_x: np.ndarray, names, c, standardise, classes, large):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from edgecls.train import logistic_head

    x = np.concatenate([views[v] for v in names])
    yy = np.tile(y, len(names))
    if standardise:
        scaler = StandardScaler().fit(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), yy)
        return model.predict(scaler.transform(test_x))
    if c is None and large:
        return None  # inner CV on thousands of photos x views takes too long on this host
    kernel, bias, _ = logistic_head(x, yy, classes, seed=0, groups=np.tile(np.arange(len(y)), len(names)), c=c)
    return (test_x @ kernel + bias).argmax(1)


def cv_table(name: str, mode: str, pool: dict, y: np.ndarray, classes: int, folds: int) -> None:
    """K-fold CV of every head on the pool (fold seed 0, the same folds for all), paired with the first."""
    from edgecls.data import fold_indices

    print(f"\n### {name}, {mode}: {folds}-fold CV on {len(y)} pool photos\n")
    print("| head | accuracy (Wilson 95%) | minus the first head (paired) |\n|---|---|---|")
    base = None
    for head, (names, c, standardise) in HEADS.items():
        right = np.zeros(len(y), bool)
        for fold in range(folds):
            split = fold_indices(y, folds, fold, 0)
            train_views = {v: f[split["train"]] for v, f in pool.items()}
            pred = predict(train_views, y[split["train"]], pool["as is"][split["val"]], names, c, standardise,
                           classes, len(y) > 1000)
            if pred is None:
                break
            right[split["val"]] = pred == y[split["val"]]
        else:
            base = right if base is None else base
            print(f"| {head} | {rm.cell(int(right.sum()), len(right))} | "
                  f"{rm.pair_cell(right, base) if right is not base else '-'} |", flush=True)


def main() -> int:
    shared = Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="hymenoptera")
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--weights", default=str(shared / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    ap.add_argument("--modes", default="center_crop,stretch")
    ap.add_argument("--cv", type=int, default=0, help="also K-fold CV on the pool (the same folds for every head)")
    ap.add_argument("--heads", help="comma list of head numbers (1-based, order of HEADS) to run; default all")
    args = ap.parse_args()
    if args.heads:
        keep = [list(HEADS)[int(i) - 1] for i in args.heads.split(",")]
        for name in list(HEADS):
            if name not in keep:
                del HEADS[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rich.console import Console

    from edgecls.cache import cache_root

    console = Console(stderr=True)
    cache_dir = cache_root() / "bench" / "resize_mode_cv"
    print(f"Command: `python bench/head_diagnosis.py {' '.join(sys.argv[1:])}`\n")
    for ds in rm.datasets(args.datasets.split(","), shared, args.data, cache_dir):
        for mode in args.modes.split(","):
            pool, ok = rm.features(ds.pool, ds.pool_targets, ds.classes, mode, 224, ds.flip, args.weights,
                                   cache_dir, console)
            if ds.held:
                held, held_ok = rm.features(ds.held, ds.held_targets, ds.classes, mode, 224, False, args.weights,
                                            cache_dir, console, training_views=False)
            y = ds.pool_targets[ok]
            if args.cv:
                cv_table(ds.name, mode, pool, y, len(ds.classes), args.cv)
            if not ds.held:
                continue
            test_y = ds.held_targets[held_ok]
            print(f"\n### {ds.name}, {mode}: heads fitted on {len(y)} pool photos, scored on {len(test_y)} held out\n")
            print("| head | accuracy (Wilson 95%) | minus the default head (paired) |\n|---|---|---|")
            base = None
            for name, (names, c, standardise) in HEADS.items():
                pred = predict(pool, y, held["as is"], names, c, standardise, len(ds.classes), len(y) > 1000)
                if pred is None:
                    continue
                right = pred == test_y
                base = right if base is None else base
                print(f"| {name} | {rm.cell(int(right.sum()), len(right))} | "
                      f"{rm.pair_cell(right, base) if right is not base else '-'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
