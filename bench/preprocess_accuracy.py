"""Does edgecls's resize cost accuracy? ImageNet models through edgecls's own preprocessing against
a plain script's resize (issue 15), and the preprocessing cost per camera frame.

Each photo goes through each model in both resize modes (stretch; center_crop: the central 0.875 of
the shorter side), its pixels resized five ways: a plain cv2.resize with INTER_AREA, INTER_LINEAR
or INTER_CUBIC of the same window, the previous edgecls path (pyrDown halvings, then one bilinear
step of up to 2x), and edgecls now (`Classifier.prepare`, exactly what `edgecls predict --resize
MODE` does). Prints top-1 with Wilson 95% intervals, the paired difference edgecls - INTER_AREA
with its 95% interval (Agresti-Min) and McNemar's exact p, then the cost per frame.

Models (found under $EDGECLS_ASSETS, else ../shared): the Coral MobileNetV1 0.25 (uint8, 128 px)
and MobileNetV2 1.0 (uint8, 224 px); the shared Keras MobileNetV2 with its 1001-class head,
converted to float LiteRT at each of --sizes (it is fully convolutional; converted once, cached
under $EDGECLS_CACHE/bench); the ONNX-zoo MobileNetV2 int8 (torch normalisation, 224 px).

Photos: the repository's own (the shared ImageNet photos with known answers, the labelled photos,
flowers-small's daisies: label-name matches), plus every `--imagenet DIR`: photos whose file names
start with their WordNet ID (n01440764_...), scored against bench/imagenet_wnids.txt.

    python bench/preprocess_accuracy.py --imagenet /work/data/imagenet-samples \\
        --imagenet /work/data/imagen/imagen --out bench/results/preprocess_accuracy.md
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("stretch", "center_crop")
CROP = 0.875
KNOWN = {"parrot.jpg": "macaw", "cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform",
         "hot_dog.jpg": "hotdog", "bird.bmp": "chickadee", "dragonfly.bmp": "dragonfly"}
METHODS = ("INTER_AREA", "INTER_LINEAR", "INTER_CUBIC", "previous (pyrDown + linear)", "edgecls")


@dataclass
class Photo:
    path: Path
    group: str
    truth: int | str  # an ImageNet class index (0..999) or a label name to find in the model's label


@dataclass
class Model:
    name: str
    path: Path
    size: int
    normalization: str | None  # None: a uint8 model fed raw pixels
    offset: int                # output index of ImageNet class 0 (1 when there is a background class)
    labels: list[str]
    classifiers: dict = field(default_factory=dict)  # resize mode -> Classifier


def plain_window(rgb, mode: str):
    """The window a plain script resizes: all of it, or the central CROP of the shorter side."""
    if mode == "stretch":
        return rgb
    h, w = rgb.shape[:2]
    side = round(min(h, w) * CROP)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top : top + side, left : left + side]


def previous_resize(rgb, size: int):
    """edgecls's resize before issue 15: pyrDown while >= 2x, then bilinear (INTER_AREA one-sided)."""
    import cv2
    import numpy as np

    while rgb.shape[0] >= 2 * size and rgb.shape[1] >= 2 * size:
        rgb = cv2.pyrDown(rgb)
    one_sided = rgb.shape[0] >= 2 * size or rgb.shape[1] >= 2 * size
    return cv2.resize(np.ascontiguousarray(rgb), (size, size),
                      interpolation=cv2.INTER_AREA if one_sided else cv2.INTER_LINEAR)


def plain(method: str, rgb, size: int, mode: str):
    import cv2
    import numpy as np

    window = np.ascontiguousarray(plain_window(rgb, mode))
    if method == "previous (pyrDown + linear)":
        return previous_resize(window, size)
    flag = {"INTER_AREA": cv2.INTER_AREA, "INTER_LINEAR": cv2.INTER_LINEAR, "INTER_CUBIC": cv2.INTER_CUBIC}[method]
    return cv2.resize(window, (size, size), interpolation=flag)


# --- models ----------------------------------------------------------------------------------------
def keras_tflite(weights: Path, size: int, cache: Path) -> Path:
    """The Keras MobileNetV2 (1001 classes, logits) as a float LiteRT model at size x size."""
    out = cache / f"keras_mobilenet_v2_1001_{size}px_{_digest(weights)}.tflite"
    if out.is_file():
        return out
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=str(weights), classes=1001,
                                           classifier_activation=None)
    flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(flat)
    tmp.replace(out)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_models(assets: Path, sizes: list[int], names: set[str], cache: Path, threads: int) -> list[Model]:
    from edgecls.manifest import read_labels
    from edgecls.runtime import Classifier

    coral = assets / "models/coral"
    labels = read_labels(coral / "imagenet_labels.txt")  # 1001, "background" first
    specs = []
    if "coral" in names:
        if 128 in sizes:
            specs.append(Model("Coral MobileNetV1 0.25 uint8", coral / "mobilenet_v1_0.25_128_quant.tflite", 128,
                               None, 1, labels))
        if 224 in sizes:
            specs.append(Model("Coral MobileNetV2 1.0 uint8", coral / "mobilenet_v2_1.0_224_quant.tflite", 224,
                               None, 1, labels))
    if "keras" in names:
        weights = assets / "models/keras/mobilenet_v2_1.0_224_imagenet1001.weights.h5"
        for size in sizes:
            specs.append(Model("Keras MobileNetV2 1.0 float LiteRT", keras_tflite(weights, size, cache), size,
                               "tf", 1, labels))
    if "onnx" in names and 224 in sizes:
        specs.append(Model("ONNX-zoo MobileNetV2 int8", assets / "models/onnx/mobilenetv2-12-int8.onnx", 224,
                           "torch", 0, labels[1:]))
    for m in specs:
        for mode in MODES:
            m.classifiers[mode] = Classifier.from_artifact(
                m.path, labels=m.labels, normalization=m.normalization, resize=mode, activation="none",
                num_threads=threads)
            size = m.classifiers[mode].preprocessing.size
            if tuple(size) != (m.size, m.size):
                raise SystemExit(f"{m.path}: input {size}, expected {m.size}x{m.size}")
    return specs


# --- photos ----------------------------------------------------------------------------------------
def own_photos(assets: Path) -> list[Photo]:
    from edgecls.preprocess import is_image_name

    photos = [Photo(assets / "images/imagenet-photos" / k, "shared ImageNet photos", v) for k, v in KNOWN.items()]
    folder = assets / "images/labeled-photos"
    for line in (folder / "tags.tsv").read_text().splitlines():
        if line.strip():
            name, label = line.split("\t")
            if (folder / name).is_file():
                photos.append(Photo(folder / name, "labeled-photos", label))
    photos += [Photo(p, "flowers-small daisy", "daisy") for p in sorted((assets / "data/flowers-small/daisy").iterdir())
               if is_image_name(p)]
    return photos


def imagenet_photos(folder: Path, wnids: list[str]) -> tuple[list[Photo], int]:
    """Photos named by WordNet ID; also the count of those whose ID is not one of the 1000 classes."""
    from edgecls.preprocess import is_image_name

    index = {w: i for i, w in enumerate(wnids)}
    photos, other = [], 0
    for path in sorted(folder.rglob("*")):
        if not (path.is_file() and is_image_name(path)):
            continue
        wnid = path.name.split("_")[0]
        if wnid in index:
            photos.append(Photo(path, folder.name, index[wnid]))
        else:
            other += 1
    if not photos:
        raise SystemExit(f"{folder}: no photos named by an ImageNet class WordNet ID (n01440764_...)")
    return photos, other


# --- measuring -------------------------------------------------------------------------------------
def run(models: list[Model], photos: list[Photo]) -> dict:
    """Top-1 output index per (model index, mode, method): arrays over the photos (-1: unreadable)."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from edgecls.errors import ImageError
    from edgecls.preprocess import read_rgb

    top1 = {(i, mode, method): np.full(len(photos), -1, np.int32)
            for i in range(len(models)) for mode in MODES for method in METHODS}
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as progress:
        task = progress.add_task("photos x models x resize modes x methods", total=len(photos))
        for n, photo in enumerate(photos):
            try:
                rgb = read_rgb(photo.path)
            except ImageError as exc:
                progress.console.print(f"skipped: {exc}", markup=False)
                progress.advance(task)
                continue
            for i, m in enumerate(models):
                for mode in MODES:
                    clf = m.classifiers[mode]
                    seen: dict[bytes, int] = {}  # identical model inputs run once
                    for method in METHODS:
                        x = clf.prepare(rgb if method == "edgecls" else plain(method, rgb, m.size, mode))
                        key = hashlib.sha1(x.tobytes()).digest()
                        if key not in seen:
                            seen[key] = int(clf.scores_from_inputs(x[None])[0].argmax())
                        top1[(i, mode, method)][n] = seen[key]
            progress.advance(task)
            if not progress.console.is_terminal and (n + 1) % 100 == 0:
                progress.console.print(f"{n + 1}/{len(photos)} photos", markup=False)
    return top1


def cached_run(models: list[Model], photos: list[Photo], cache: Path) -> dict:
    """`run`, its answers kept on disk: keyed by the photos, the models and edgecls's resize code,
    so a rerun (another table layout, the timing) does not repeat an hour of inference."""
    import numpy as np

    h = hashlib.sha256((ROOT / "edgecls/preprocess.py").read_bytes())
    h.update(repr((MODES, METHODS, CROP)).encode())
    h.update(repr(previous_resize.__code__.co_code).encode())
    for m in models:
        h.update(f"{m.name}|{m.size}|{_digest(m.path)}".encode())
    for p in photos:
        st = p.path.stat()
        h.update(f"{p.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{p.truth}".encode())
    path = cache / f"preprocess_accuracy-{h.hexdigest()[:20]}.npz"
    keys = [(i, mode, method) for i in range(len(models)) for mode in MODES for method in METHODS]
    if path.is_file():
        saved = np.load(path)
        return {k: saved[f"a{n}"] for n, k in enumerate(keys)}
    top1 = run(models, photos)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"a{n}": top1[k] for n, k in enumerate(keys)})
    tmp.replace(path)
    return top1


def correct(model: Model, photos: list[Photo], top1) -> "np.ndarray":
    import numpy as np

    out = np.zeros(len(photos), bool)
    for n, (photo, k) in enumerate(zip(photos, top1)):
        if k < 0:
            continue
        if isinstance(photo.truth, int):
            out[n] = k == photo.truth + model.offset
        else:
            out[n] = photo.truth.lower() in model.labels[k].lower()
    return out


def accuracy_tables(models: list[Model], photos: list[Photo], top1: dict) -> list[str]:
    import numpy as np

    from edgecls.evaluate import paired_difference, wilson_interval

    groups = list(dict.fromkeys(p.group for p in photos))
    readable = np.asarray(top1[(0, MODES[0], METHODS[0])] >= 0)
    imagenet = np.array([isinstance(p.truth, int) for p in photos]) & readable
    lines = []
    sets = [("all ImageNet-labelled photos (--imagenet)", imagenet)] if imagenet.any() else []
    sets += [(g, np.array([p.group == g for p in photos]) & readable) for g in groups]
    for title, rows in sets:
        n = int(rows.sum())
        lines += [f"\n### {title}: {n} photos\n",
                  "| model | px | resize | " + " | ".join(METHODS) + " | edgecls - INTER_AREA (95% CI; McNemar p; "
                  "discordant) | INTER_LINEAR - INTER_AREA | previous - INTER_AREA |",
                  "|---|---|---|" + "---|" * len(METHODS) + "---|---|---|"]
        for i, m in enumerate(models):
            for mode in MODES:
                hits = {method: correct(m, photos, top1[(i, mode, method)])[rows] for method in METHODS}
                cells = []
                for method in METHODS:
                    k = int(hits[method].sum())
                    lo, hi = wilson_interval(k, n)
                    cells.append(f"{k / n:.3f} ({lo:.3f}-{hi:.3f})")
                for a, b in (("edgecls", "INTER_AREA"), ("INTER_LINEAR", "INTER_AREA"),
                             ("previous (pyrDown + linear)", "INTER_AREA")):
                    d = paired_difference(hits[a], hits[b])
                    cells.append(f"{d['difference']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}; "
                                 f"p={d['p_value']:.2g}; {d['a_only']}/{d['b_only']})")
                lines.append(f"| {m.name} | {m.size} | {mode} | " + " | ".join(cells) + " |")
        if n < 200:
            lines.append(f"\n{n} photos: each interval is several points wide; this set cannot show a 1-2 point change.")
    return lines


def frame_costs(sizes: list[int], assets: Path, repeats: int = 200) -> list[str]:
    """Per-frame resize cost: edgecls (as the stream calls it: a channel-reversed BGR view), a plain
    INTER_AREA of the same window, and the previous pyramid path. CPU ms is this process's time
    (cv2 may use 2 threads), the stabler figure on a shared host; wall ms is the median block."""
    import cv2
    import numpy as np

    from edgecls.preprocess import Preprocessing

    photo = cv2.imread(str(assets / "images/labeled-photos/coffeepot2.jpg"))
    lines = ["| frame | px | resize | edgecls resize: CPU / wall ms | + normalising lookup (float input) | "
             "plain INTER_AREA | previous (pyrDown + linear) |", "|---|---|---|---|---|---|---|"]
    lut = np.zeros((256, 1, 3), np.float32)  # `Classifier.prepare` normalises with one table lookup

    def cost(fn) -> str:
        fn()
        walls, cpus = [], []
        for _ in range(5):
            w, c = time.perf_counter(), time.process_time()
            for _ in range(repeats // 5):
                fn()
            walls.append((time.perf_counter() - w) / (repeats // 5) * 1e3)
            cpus.append((time.process_time() - c) / (repeats // 5) * 1e3)
        return f"{np.median(cpus):.2f} / {np.median(walls):.2f}"

    for frame_w, frame_h in ((640, 480), (1280, 720), (1920, 1080)):
        bgr = cv2.resize(photo, (frame_w, frame_h), interpolation=cv2.INTER_AREA)
        view = bgr[:, :, ::-1]  # what the stream passes: RGB as a view of the camera's BGR frame
        for size in sizes:
            for mode in MODES if frame_w == 640 else ("stretch",):
                p = Preprocessing.named("raw", (size, size), mode, CROP)
                window = plain_window(bgr, mode)
                lines.append(f"| {frame_w}x{frame_h} | {size} | {mode} | {cost(lambda: p.resize_image(view))} | "
                             f"{cost(lambda: cv2.LUT(p.resize_image(view), lut))} | "
                             f"{cost(lambda: cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA))} | "
                             f"{cost(lambda: previous_resize(window, size))} |")
    return lines


def host() -> str:
    import cv2

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f}; "
            f"python {platform.python_version()}, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet", type=Path, action="append", default=[],
                        help="a folder of ImageNet photos named by WordNet ID (repeatable)")
    parser.add_argument("--sizes", default="128,160,224", help="input sizes (comma-separated)")
    parser.add_argument("--models", default="coral,keras,onnx", help="coral, keras, onnx (comma-separated)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photos per --imagenet folder")
    parser.add_argument("--threads", type=int, default=2, help="engine threads")
    parser.add_argument("--no-timing", action="store_true", help="skip the per-frame cost table")
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    assets = Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))
    if not (assets / "models/coral").is_dir():
        raise SystemExit(f"shared assets not found at {assets} (set EDGECLS_ASSETS)")
    sizes = [int(s) for s in args.sizes.split(",")]
    from edgecls.cache import cache_root

    wnids = (ROOT / "bench/imagenet_wnids.txt").read_text().split()
    photos = own_photos(assets)
    notes = []
    for folder in args.imagenet:
        found, other = imagenet_photos(folder, wnids)
        if args.limit:
            found = found[:: max(1, len(found) // args.limit)][: args.limit]
        photos += found
        notes.append(f"{folder}: {len(found)} photos of ImageNet classes"
                     + (f" ({other} others, of classes outside the 1000, left out)" if other else ""))
    models = load_models(assets, sizes, set(args.models.split(",")), cache_root() / "bench", args.threads)
    started = time.time()
    top1 = cached_run(models, photos, cache_root() / "bench")
    lines = ["# Resize fidelity: top-1 through edgecls's preprocessing vs a plain script (issue 15)", "",
             f"Command: `python bench/preprocess_accuracy.py {shlex.join(sys.argv[1:])}`", "",
             f"Host: {host()}; {time.strftime('%Y-%m-%d')}; {time.time() - started:.0f} s of inference", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", "Top-1 with Wilson 95% intervals. center_crop: the central 0.875 of the shorter side, the "
              "same window for every method. edgecls: `Classifier.prepare` with `--resize MODE` and the default "
              "interpolation (area); `--interpolation linear` / `cubic` give the INTER_LINEAR / INTER_CUBIC "
              "columns exactly (tests/test_preprocess.py). The last three columns pair each photo's two answers: "
              "difference (95% interval, Agresti-Min; McNemar's exact p; photos only the first / only the "
              "second got right)."]
    lines += accuracy_tables(models, photos, top1)
    if not args.no_timing:
        lines += ["", "## Preprocessing cost per frame", "", f"Host: {host()}. CPU ms: this process's CPU "
                  "time per frame (OpenCV may use 2 threads), the stable figure on a shared host; wall ms: median of "
                  "5 blocks, inflated when the host is shared (see its load). The frame is a channel-reversed view of a "
                  "BGR frame, as `edgecls stream` passes it.",
                  ""] + frame_costs(sizes, assets)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from edgecls.manifest import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
