"""Does the fast anti-aliased resize change any answer? Compares it with the exact box filter.

The Coral MobileNetV2 (uint8 LiteRT) classifies every photo of the shared ImageNet photos, the
labeled photos and flowers-small twice: once through `edgecls.preprocess` (pyrDown steps, then
bilinear) and once with a single cv2.INTER_AREA resize (the previous definition). Prints top-1
agreement, the known answers of the ImageNet photos, and the resize cost on a 640x480 frame.
With `--flowers-model model.keras` (from `edgecls train` on flowers-small) it also prints that
model's validation accuracy (its recorded split) under both resize definitions.

    python bench/preprocess_accuracy.py [--flowers-model runs/flowers/model.keras]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KNOWN = {"parrot.jpg": "macaw", "cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform",
         "hot_dog.jpg": "hotdog", "bird.bmp": "chickadee", "dragonfly.bmp": "dragonfly"}


def main() -> int:
    import argparse

    import cv2
    import numpy as np

    from edgecls.preprocess import is_image_name, read_rgb
    from edgecls.runtime import Classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flowers-model", type=Path, help="a .keras model trained on flowers-small")
    args = parser.parse_args()
    assets = Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))
    coral = assets / "models/coral"
    clf = Classifier.from_artifact(coral / "mobilenet_v2_1.0_224_quant.tflite", labels=coral / "imagenet_labels.txt")
    h, w = clf.preprocessing.size

    def area(rgb):
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    def top1(x):
        return int(clf.scores_from_inputs(x[None])[0].argmax())

    def correct(label: str, expected: str) -> bool:
        return expected.lower() in label.lower()

    photos = assets / "images/labeled-photos"
    tags = dict(line.split("\t") for line in (photos / "tags.tsv").read_text().splitlines() if line.strip())
    sets = {
        "imagenet-photos (known answers)": {assets / "images/imagenet-photos" / k: v for k, v in KNOWN.items()},
        "labeled-photos (tags.tsv)": {photos / k: v for k, v in tags.items() if (photos / k).is_file()},
        "flowers-small daisy (an ImageNet class)": {p: "daisy" for p in sorted((assets / "data/flowers-small/daisy").iterdir())
                                                    if is_image_name(p)},
        "flowers-small (all, agreement only)": {p: None for p in sorted((assets / "data/flowers-small").rglob("*"))
                                                if p.is_file() and is_image_name(p)},
    }
    for name, expected in sets.items():
        same, right_new, right_old = 0, 0, 0
        for f, want in expected.items():
            rgb = read_rgb(f)
            new, old = top1(clf.prepare(rgb)), top1(clf.prepare(area(rgb)))
            same += new == old
            if want:
                right_new += correct(clf.labels[new], want)
                right_old += correct(clf.labels[old], want)
        n = len(expected)
        line = f"{name}: top-1 agreement {same}/{n}"
        if any(expected.values()):
            line += f"; correct: edgecls {right_new}/{n}, INTER_AREA {right_old}/{n}"
        print(line)

    if args.flowers_model:
        flowers_accuracy(args.flowers_model, assets / "data/flowers-small")

    # A camera frame as the stream gets it: OpenCV's BGR, channel-reversed as a view.
    view = cv2.resize(cv2.imread(str(assets / "images/imagenet-photos/parrot.jpg")), (640, 480))[:, :, ::-1]

    def previous_prepare(rgb):  # the definition before: full-frame copy, INTER_AREA, lookup
        return cv2.LUT(area(np.ascontiguousarray(rgb)), clf._lut)

    print("per 640x480 frame (wall ms, CPU ms of this process; wall is inflated on a busy host):")
    for label, fn in (("edgecls resize", clf.preprocessing.resize_image), ("INTER_AREA resize", area),
                      ("edgecls prepare (resize + lookup)", clf.prepare), ("previous prepare", previous_prepare)):
        fn(view)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(300):
            fn(view)
        print(f"  {label}: {(time.perf_counter() - t) / 300 * 1e3:.3f} wall, {(time.process_time() - c) / 300 * 1e3:.3f} CPU")
    return 0


def flowers_accuracy(model_path: Path, dataset: Path) -> None:
    """Validation accuracy of a trained flowers model, edgecls resize vs one INTER_AREA resize."""
    import numpy as np

    from edgecls import data
    from edgecls.preprocess import read_rgb
    from edgecls.keras_model import KerasScorer

    scorer = KerasScorer(model_path)
    folder = data.scan(dataset)
    val = data.recorded_split(folder, scorer.manifest.source.get("split"))["val"]
    p = scorer.preprocessing
    h, w = p.size
    new = np.stack([p.load(folder.files[i]) for i in val])
    old = np.stack([cv2_area(read_rgb(folder.files[i]), h, w) for i in val])
    targets = folder.targets[val]
    acc_new = float(np.mean(scorer.scores_resized(new).argmax(1) == targets))
    acc_old = float(np.mean(scorer.scores_resized(old).argmax(1) == targets))
    print(f"flowers-small validation ({len(val)} photos), {model_path}: accuracy edgecls {acc_new:.4f}, "
          f"INTER_AREA {acc_old:.4f}")


def cv2_area(rgb, h, w):
    import cv2

    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


if __name__ == "__main__":
    sys.exit(main())
