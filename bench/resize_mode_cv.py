"""Stretch or aspect-preserving crop for frozen-backbone training (issue 15, part 2), and what
training on every labelled photo ("refit-all") gains over holding 20% out for validation.

Per dataset, frozen MobileNetV2 features (the shared ImageNet weights, 224 px) of every photo in
both resize modes: stretch (today's recipes) and center_crop (the central 0.875 of the shorter
side, the Keras/TF-slim MobileNet evaluation crop), each with the views edgecls's default head
learns from (as is, mirrored when flips are on, four 0.8 corner crops). Features are computed
once per dataset, mode and view and cached under $EDGECLS_CACHE/bench.

Heads: edgecls's default (`train.logistic_head` on all views, C by picture-grouped inner 3-fold
CV: what `edgecls train` fits in phase 1) and the frozen linear probe of `edgecls cv --probe`
(standardised as-is features, logistic regression, C=1). Choosing C by inner CV costs 16 fits of
minutes each on a few thousand photos x 6 views, so pools above --large photos (clothing, digits)
get the default head with C fixed (`edgecls train --head-c 1`) and one fold seed.

1. k-fold CV on the labelled pool, the same folds for both modes: accuracy with Wilson 95%
   intervals, and the paired difference center_crop - stretch per photo (95% interval, McNemar p).
2. Datasets with a held-out set: both heads fitted on the whole pool, scored on the held-out set.
3. Refit-all: the default head fitted on the whole pool vs on the 80% `edgecls train` keeps
   (`data.split_indices`, several split seeds), both scored on the held-out set; the difference
   with a bootstrap 95% interval over held-out photos.

    python bench/resize_mode_cv.py --out bench/results/resize_mode_cv.md

Datasets (--datasets): flowers (shared flowers-small, CV only), hymenoptera (train: CV, val:
held out), clothing (train+validation: CV, test: held out), digits (the quickstart's scikit-learn
scans, 32x32 PNGs, square; flips off as in the quickstart; CV only).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("stretch", "center_crop")
CROP_FRACTION = 0.875  # keras.applications MobileNet / TF-slim evaluation: central 87.5%
HEADS = ("default head", "linear probe")


@dataclass
class Dataset:
    name: str
    pool: list[Path]          # labelled photos for CV (and refit-all)
    pool_targets: np.ndarray
    held: list[Path]          # held-out photos (may be empty)
    held_targets: np.ndarray
    classes: list[str]
    flip: bool = True


def _files(roots: list[Path]) -> tuple[list[Path], np.ndarray, list[str]]:
    from edgecls import data

    folders = [data.scan(r) for r in roots]
    classes = folders[0].classes
    for f in folders[1:]:
        if f.classes != classes:
            raise SystemExit(f"{f.root}: classes {f.classes} differ from {classes}")
    return [p for f in folders for p in f.files], np.concatenate([f.targets for f in folders]), classes


def datasets(names: list[str], shared: Path, data_root: Path, work: Path) -> list[Dataset]:
    out = []
    for name in names:
        if name == "flowers":
            pool, y, classes = _files([shared / "data/flowers-small"])
            out.append(Dataset(name, pool, y, [], np.zeros(0, int), classes))
        elif name == "hymenoptera":
            pool, y, classes = _files([data_root / "hymenoptera/train"])
            held, hy, _ = _files([data_root / "hymenoptera/val"])
            out.append(Dataset(name, pool, y, held, hy, classes))
        elif name == "clothing":
            pool, y, classes = _files([data_root / "clothing/train", data_root / "clothing/validation"])
            held, hy, _ = _files([data_root / "clothing/test"])
            out.append(Dataset(name, pool, y, held, hy, classes))
        elif name == "digits":
            from edgecls.workflows import write_digits_dataset

            pool, y, classes = _files([write_digits_dataset(work / "digits")])
            out.append(Dataset(name, pool, y, [], np.zeros(0, int), classes, flip=False))
        else:
            raise SystemExit(f"unknown dataset {name!r}")
    return out


def aspect_summary(files: list[Path]) -> str:
    import cv2

    ratios = []
    for f in files[:: max(1, len(files) // 200)]:
        img = cv2.imread(str(f), cv2.IMREAD_REDUCED_COLOR_8) if str(f).lower().endswith((".jpg", ".jpeg")) else cv2.imread(str(f))
        if img is not None:
            ratios.append(img.shape[1] / img.shape[0])
    r = np.asarray(ratios)
    return f"width/height median {np.median(r):.2f}, 10-90% {np.percentile(r, 10):.2f}-{np.percentile(r, 90):.2f}"


# --- features ------------------------------------------------------------------------------------
def features(files: list[Path], targets: np.ndarray, classes: list[str], mode: str, size: int, flip: bool,
             weights: str, cache_dir: Path, console, training_views: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per view, backbone features of every readable photo (rows of `files` in `ok`), cached on disk;
    `training_views` False: the photos as they are only (what a held-out set needs)."""
    from edgecls.augment import feature_views
    from edgecls.cache import build_cache, cache_key
    from edgecls.models import get_recipe
    from edgecls.preprocess import Preprocessing

    recipe = get_recipe("mobilenet_v2")
    prep = Preprocessing.named(recipe.normalization, (size, size), mode, CROP_FRACTION)
    views = feature_views(flip, 0.8) if training_views else {"as is": None}
    key = hashlib.sha256(f"{cache_key(files, prep)}|{list(views)}|{hashlib.sha256(Path(weights).read_bytes()).hexdigest()}"
                         .encode()).hexdigest()[:20]
    path = cache_dir / f"features-{key}.npz"
    if path.is_file():
        saved = np.load(path)
        return {v: saved[f"view{i}"] for i, v in enumerate(views)}, saved["ok"]
    from edgecls.train import TrainConfig, build_net, feeder, frozen_features

    console.print(f"  {mode}: decoding {len(files)} photos, then {len(views)} backbone passes each", markup=False)
    cache = build_cache(files, prep)
    rows = np.flatnonzero(cache.ok)
    net = build_net(recipe, classes, (size, size), weights, TrainConfig(input_size=(size, size), weights=weights),
                     prep, "float32", False)
    per_view, got = frozen_features(net, feeder(cache, targets, rows, 64, shuffle=False, seed=0), tuple(views.values()))
    if not np.array_equal(got, targets[rows]):
        raise SystemExit("feature rows out of order")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ok=cache.ok, **{f"view{i}": f for i, f in enumerate(per_view)})
    tmp.replace(path)
    return dict(zip(views, per_view)), cache.ok


# --- heads ----------------------------------------------------------------------------------------
def fit_predict(head: str, views: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray, test_x: np.ndarray,
                classes: int, seed: int, c: float | None = None) -> np.ndarray:
    """Class predictions for `test_x` (as-is features) from a head fitted on rows `train`."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgecls.train import logistic_head

    if head == "linear probe":
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            probe.fit(views["as is"][train], y[train])
        return probe.predict(test_x)
    x = np.concatenate([v[train] for v in views.values()])
    yy = np.tile(y[train], len(views))
    kernel, bias, _ = logistic_head(x, yy, classes, seed=seed, groups=np.tile(np.arange(len(train)), len(views)), c=c)
    return (test_x @ kernel + bias).argmax(1)


def bootstrap_interval(diff_per_item: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff_per_item[rng.integers(0, len(diff_per_item), (rounds, len(diff_per_item)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cell(k: int, n: int) -> str:
    from edgecls.evaluate import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k / n:.3f} ({lo:.3f}-{hi:.3f})"


def pair_cell(a: np.ndarray, b: np.ndarray) -> str:
    from edgecls.evaluate import paired_difference

    d = paired_difference(a, b)
    return (f"{d['difference']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}; p={d['p_value']:.2g}; "
            f"{d['a_only']}/{d['b_only']})")


def main() -> int:
    shared = Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="flowers,hymenoptera,clothing,digits")
    ap.add_argument("--data", type=Path, default=Path("/work/data"), help="folder holding clothing/ and hymenoptera/")
    ap.add_argument("--weights", default=str(shared / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seeds", default="0", help="comma list; the first seed's folds give the paired interval")
    ap.add_argument("--split-seeds", type=int, default=3, help="80/20 splits for the refit-all estimate")
    ap.add_argument("--large", type=int, default=1000,
                    help="pools above this many photos: first fold seed only, and the default head with C fixed "
                         "at --large-c (`edgecls train --head-c`) instead of chosen by inner CV per fit")
    ap.add_argument("--large-c", type=float, default=1.0)
    ap.add_argument("--no-cv", action="store_true", help="skip the k-fold CV (held-out and refit-all only)")
    ap.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rich.console import Console

    from edgecls import data
    from edgecls.cache import cache_root
    from edgecls.cv import fold_indices

    console = Console(stderr=True)
    fold_seeds = [int(s) for s in args.fold_seeds.split(",")]
    cache_dir = cache_root() / "bench" / "resize_mode_cv"
    started = time.time()
    sets = datasets(args.datasets.split(","), shared, args.data, cache_dir)
    lines = ["# Resize mode for frozen-backbone training: stretch vs center_crop, and refit-all (issue 15 part 2)", "",
             f"Command: `python bench/resize_mode_cv.py {shlex.join(sys.argv[1:])}`", "",
             f"Host: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d')}", "",
             f"MobileNetV2 (shared ImageNet weights) at {args.size} px, frozen; center_crop keeps the central "
             f"{CROP_FRACTION} of the shorter side. Default head: `train.logistic_head` on the as-is, mirrored "
             "(flips on) and four 0.8 corner-crop views, C by picture-grouped inner CV. Probe: `edgecls cv --probe` "
             "(standardised features, logistic regression C=1). Paired cells: difference (95% interval; McNemar p; "
             "photos only center_crop / only stretch got right).", ""]
    cv_rows, held_rows, refit_rows = [], [], []
    head_note: dict[str, str] = {}
    for ds in sets:
        console.rule(f"{ds.name}: {len(ds.pool)} photos for CV, {len(ds.held)} held out")
        lines.append(f"- {ds.name}: {len(ds.pool)} pool photos, {len(ds.held)} held out, {len(ds.classes)} classes; "
                     f"{aspect_summary(ds.pool)}")
        feats, held = {}, {}
        for mode in MODES:
            feats[mode] = features(ds.pool, ds.pool_targets, ds.classes, mode, args.size, ds.flip, args.weights,
                                   cache_dir, console)
            if ds.held:
                held[mode] = features(ds.held, ds.held_targets, ds.classes, mode, args.size, False, args.weights,
                                      cache_dir, console, training_views=False)
        ok = feats["stretch"][1] & feats["center_crop"][1]
        rows = np.flatnonzero(ok)
        y = ds.pool_targets[rows]
        views = {m: {v: f[np.searchsorted(np.flatnonzero(feats[m][1]), rows)] for v, f in feats[m][0].items()}
                 for m in MODES}
        k = len(ds.classes)
        # The inner-CV choice of C costs 16 fits, each minutes on a few thousand photos x 6 views
        # (lbfgs to 3000 iterations): a large pool gets one C, as `train --head-c` gives it.
        large = len(rows) > args.large
        c = args.large_c if large else None
        seeds = fold_seeds[:1] if large else fold_seeds
        head_note[ds.name] = (f"C fixed at {args.large_c:g}, fold seed {seeds[0]}" if large
                              else f"C by inner CV per fit, fold seeds {','.join(map(str, seeds))}")
        # 1. k-fold CV, the same folds for both modes
        for head in HEADS if not args.no_cv else ():
            right = {m: [] for m in MODES}
            for seed in seeds:
                hits = {m: np.zeros(len(rows), bool) for m in MODES}
                for fold in range(args.folds):
                    split = fold_indices(y, args.folds, fold, seed)
                    for m in MODES:
                        pred = fit_predict(head, views[m], y, split["train"], views[m]["as is"][split["val"]], k, fold, c)
                        hits[m][split["val"]] = pred == y[split["val"]]
                for m in MODES:
                    right[m].append(hits[m])
            n = len(rows)
            per_seed = " ".join(f"{s}: {r_c.mean() - r_s.mean():+.3f}"
                                for s, r_c, r_s in zip(seeds, right["center_crop"], right["stretch"]))
            label = f"{head} ({head_note[ds.name]})" if head == "default head" else head
            cv_rows.append(f"| {ds.name} | {label} | {n} | {cell(int(right['stretch'][0].sum()), n)} | "
                           f"{cell(int(right['center_crop'][0].sum()), n)} | "
                           f"{pair_cell(right['center_crop'][0], right['stretch'][0])} | {per_seed} |")
            console.print(cv_rows[-1], markup=False)
        if not ds.held:
            continue
        hrows = np.flatnonzero(held["stretch"][1] & held["center_crop"][1])
        hy = ds.held_targets[hrows]
        hx = {m: held[m][0]["as is"][np.searchsorted(np.flatnonzero(held[m][1]), hrows)] for m in MODES}
        everything = np.arange(len(rows))
        # 2. held out, fitted on the whole pool
        for head in HEADS:
            hits = {m: fit_predict(head, views[m], y, everything, hx[m], k, 0, c) == hy for m in MODES}
            label = f"{head} ({head_note[ds.name].split(',')[0]})" if head == "default head" else head
            held_rows.append(f"| {ds.name} | {label} | {len(hy)} | {cell(int(hits['stretch'].sum()), len(hy))} | "
                             f"{cell(int(hits['center_crop'].sum()), len(hy))} | "
                             f"{pair_cell(hits['center_crop'], hits['stretch'])} |")
            console.print(held_rows[-1], markup=False)
            if head != "default head" or args.split_seeds < 1:
                continue
            # 3. refit-all vs the 80% that `edgecls train` keeps (val_fraction 0.2)
            for m in MODES:
                partial = np.stack([fit_predict(head, views[m], y, data.split_indices(y, 0.2, 0.0, s)["train"], hx[m],
                                                k, 0, c) == hy for s in range(args.split_seeds)])
                gain = hits[m].astype(float) - partial.mean(0)
                lo, hi = bootstrap_interval(gain)
                refit_rows.append(f"| {ds.name} | {m} | {len(hy)} | {partial.mean():.3f} "
                                  f"({' '.join(f'{a:.3f}' for a in partial.mean(1))}) | {hits[m].mean():.3f} | "
                                  f"{gain.mean():+.3f} ({lo:+.3f} to {hi:+.3f}) |")
                console.print(refit_rows[-1], markup=False)
    seeds_note = "the paired interval is the first fold seed's"
    if cv_rows:
        lines += ["", f"## 1. {args.folds}-fold CV on the pool ({seeds_note})", "",
                  "| dataset | head | photos | stretch | center_crop | center_crop - stretch | difference per fold "
                  "seed |", "|---|---|---|---|---|---|---|", *cv_rows]
    if held_rows:
        lines += ["", "## 2. Held-out set, heads fitted on the whole pool", "",
                  "| dataset | head | held-out photos | stretch | center_crop | center_crop - stretch |",
                  "|---|---|---|---|---|---|", *held_rows,
                  ]
    if refit_rows:
        lines += ["", f"## 3. Refit-all: default head on the whole pool vs on 80% of it ({args.split_seeds} split "
                  "seeds)", "", "| dataset | resize | held-out photos | 80% (per split) | 100% | gain (bootstrap 95% "
                  "interval) |", "|---|---|---|---|---|---|", *refit_rows]
    lines += ["", f"{time.time() - started:.0f} s in all (features cached in {cache_dir})"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from edgecls.manifest import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
