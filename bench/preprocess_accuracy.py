"""Does the fast anti-aliased resize change any answer? Compares it with the exact box filter.

The Coral MobileNetV2 (uint8 LiteRT) classifies every photo of the shared ImageNet photos, the
labeled photos and flowers-small twice: once through `edgecls.preprocess` (pyrDown steps, then
bilinear) and once with a single cv2.INTER_AREA resize (the previous definition). Prints top-1
agreement, the known answers of the ImageNet photos, and the resize cost on a 640x480 frame.

    python bench/preprocess_accuracy.py
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
    import cv2
    import numpy as np

    from edgecls.preprocess import is_image_name, read_rgb
    from edgecls.runtime import Classifier

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

    frame = cv2.resize(read_rgb(assets / "images/imagenet-photos/parrot.jpg"), (640, 480))
    for label, fn in (("edgecls resize", clf.preprocessing.resize_image), ("INTER_AREA", area),
                      ("edgecls prepare (resize + lookup)", clf.prepare)):
        fn(frame)
        t = time.perf_counter()
        for _ in range(300):
            fn(frame)
        print(f"{label}: {(time.perf_counter() - t) / 300 * 1e3:.3f} ms per 640x480 frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
