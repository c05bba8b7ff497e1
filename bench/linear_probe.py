"""The frozen linear probe of issue 15, written without edgecls: the reference any edgecls recipe
must not fall below.

Photos are decoded with PIL; "crop": shorter side to 256 (PIL bilinear, anti-aliased), centre
224x224; "stretch": straight to 224x224. Keras MobileNetV2 with the shared ImageNet weights
(EDGECLS_ASSETS/models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5), inputs scaled to
[-1, 1], global average pooled; scikit-learn LogisticRegression(C=1) on the raw features, fitted on
TRAIN and scored on TEST (both image folders, one sub-folder per class). Prints accuracy with its
Wilson 95% interval; --out writes each test photo's answer (JSON) for bench/probe_compare.py.

    python bench/linear_probe.py /work/data/hymenoptera/train /work/data/hymenoptera/val \
        --out bench/results/probe_hymenoptera.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
WEIGHTS = "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


def scan(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    files, targets = [], []
    for i, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in SUFFIXES:
                files.append(f)
                targets.append(i)
    return files, np.asarray(targets), classes


def load(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if mode == "stretch":
            im = im.resize((224, 224), Image.BILINEAR)
        else:
            w, h = im.size
            scale = 256 / min(w, h)
            im = im.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - 224) // 2, (h - 224) // 2
            im = im.crop((left, top, left + 224, top + 224))
        return np.asarray(im, dtype=np.float32)


def features(files: list[Path], mode: str, weights: Path, cache: Path) -> np.ndarray:
    key = hashlib.sha256(("\n".join(str(f.resolve()) for f in files) + mode + str(weights)).encode()).hexdigest()[:16]
    path = cache / f"{key}.npy"
    if path.exists():
        return np.load(path)
    import keras

    net = keras.applications.MobileNetV2(include_top=False, weights=str(weights), input_shape=(224, 224, 3),
                                         pooling="avg")
    out = []
    for i in range(0, len(files), 32):
        batch = np.stack([load(f, mode) for f in files[i : i + 32]]) / 127.5 - 1.0
        out.append(np.asarray(net.predict_on_batch(batch), np.float32))
        print(f"\r{mode}: {min(i + 32, len(files))}/{len(files)} photos", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    feats = np.concatenate(out)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", type=Path)
    ap.add_argument("test", type=Path)
    ap.add_argument("--modes", default="crop,stretch")
    ap.add_argument("--out", type=Path, help="JSON: accuracy and each test photo's answer per mode")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/edgecls/bench/linear_probe")
    args = ap.parse_args()
    assets = Path(os.environ.get("EDGECLS_ASSETS") or Path(__file__).resolve().parents[1].parent / "shared")
    weights = assets / WEIGHTS
    if not weights.is_file():
        sys.exit(f"{weights}: MobileNetV2 ImageNet weights not found; set EDGECLS_ASSETS to the shared assets")
    from sklearn.linear_model import LogisticRegression

    train_files, train_y, classes = scan(args.train)
    test_files, test_y, test_classes = scan(args.test)
    if test_classes != classes:
        sys.exit(f"{args.test}: classes {test_classes} differ from {args.train}'s {classes}")
    report = {"train": str(args.train), "test": str(args.test), "classes": classes, "modes": {}}
    for mode in args.modes.split(","):
        start = time.time()
        tx, vx = features(train_files, mode, weights, args.cache), features(test_files, mode, weights, args.cache)
        clf = LogisticRegression(C=1.0, max_iter=10000).fit(tx, train_y)
        pred = clf.predict(vx)
        k, n = int((pred == test_y).sum()), len(test_y)
        lo, hi = wilson(k, n)
        print(f"{args.test} ({n} photos, trained on {len(train_y)}): {mode} accuracy {k / n:.3f} "
              f"(95% {lo:.3f}-{hi:.3f}) [{time.time() - start:.0f} s]")
        report["modes"][mode] = {"accuracy": k / n, "correct": k, "count": n, "ci95": [lo, hi],
                                 "answers": {str(f.relative_to(args.test)): classes[p]
                                             for f, p in zip(test_files, pred)}}
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
