"""Training input-path throughput: the real `edgecls train` path against the same model fed
in-memory uint8 arrays, cache build rate against cores, and a larger-than-RAM epoch.

    python bench/train_throughput.py                      # MobileNetV2 224, flowers photos, this host
    python bench/train_throughput.py --precision bf16 --batch 128 --images 4000   # on a GPU
    python bench/train_throughput.py --large 20000        # + 20,000-image cache, one epoch, peak RSS
    KERAS_BACKEND=jax python bench/train_throughput.py    # the GPU backend

Rows (images/s, best of the measured epochs after one warm-up epoch, training steps only):
* real path: uint8 batches read from the on-disk cache by the feeder's threads (with the
  default host-side rotation/zoom warps), flip/contrast + normalisation in the training wrapper:
  exactly what `edgecls train` runs.
* real path, no warps: the same without the host-side geometric augmentation.
* in-memory: the same wrapper model, `fit` on a uint8 numpy array in RAM (no cache, no warps).
Goals (issue 9): real >= 0.9 x in-memory on this 2-core CPU, >= 0.8 x on a GPU; cache build
>= 0.7 x cores x the single-core decode rate. The figures are printed with device and versions.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shared() -> Path:
    return Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))


def photos() -> list[Path]:
    """The shared real photos: flowers-small, labeled-photos and the ImageNet photos."""
    base = shared()
    files = sorted((base / "data" / "flowers-small").rglob("*.jpg"))
    for sub in ("images/labeled-photos", "images/imagenet-photos"):
        files += sorted(p for p in (base / sub).iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))
    return files


def header(args) -> None:
    import keras

    from edgecls.train import accelerator

    backend = keras.backend.backend()
    versions = [f"python {platform.python_version()}", f"keras {keras.__version__}", f"backend {backend}",
                f"numpy {np.__version__}"]
    if backend == "jax":
        import jax

        versions.append(f"jax {jax.__version__} devices {jax.devices()}")
    else:
        import tensorflow as tf

        versions.append(f"tensorflow {tf.__version__}")
    import cv2

    versions.append(f"opencv {cv2.__version__}")
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"device: {accelerator()} | host CPU: {cpu}, {os.cpu_count()} cores | load avg {os.getloadavg()[0]:.1f}")
    print("versions: " + ", ".join(versions))
    print(f"settings: {vars(args)}")


def cache_build(args, files: list[Path]) -> None:
    from edgecls.cache import build_cache
    from edgecls.preprocess import Preprocessing

    prep = Preprocessing.named("tf", (args.size, args.size))
    listing = (files * (args.decode_images // len(files) + 1))[: args.decode_images]
    print(f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"\n## cache build ({len(listing)} decodes of the shared photos, {args.size} px)")
    print("| workers | images/s | vs workers x single-core |")
    print("|---|---|---|")
    single = None
    for workers in sorted({1, *range(2, (os.cpu_count() or 1) + 1, max(1, (os.cpu_count() or 1) // 4))}):
        root = Path(tempfile.mkdtemp(prefix="edgecls_bench_cache_"))
        try:
            start = time.perf_counter()
            build_cache(listing, prep, root=root, workers=workers)
            rate = len(listing) / (time.perf_counter() - start)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        single = single or rate
        print(f"| {workers} | {rate:.0f} | {rate / (workers * single):.2f} |")


class EpochTimer:
    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self.t0)

        timer = Timer()
        timer.times = []
        return timer


def _fit_rate(model, data, count: int, epochs: int, batch: int | None = None, y=None) -> float:
    timer = EpochTimer()
    if y is None:
        model.fit(data, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
    else:
        model.fit(data, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=True, callbacks=[timer])
    return count / min(timer.times[1:])  # first epoch compiles


def throughput(args, files: list[Path]) -> None:
    import keras

    from edgecls.augment import Augmentation
    from edgecls.cache import build_cache
    from edgecls.models import get_recipe
    from edgecls.train import PRECISIONS, TrainConfig, build_net, feeder

    recipe = get_recipe(args.backbone)
    size = (args.size, args.size)
    prep = recipe.preprocessing(size)
    listing = (files * (args.images // len(files) + 1))[: args.images]
    cache = build_cache(listing, prep, workers=os.cpu_count())
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, len(listing))
    rows = np.arange(len(listing))
    in_memory = cache.read(rows)
    config = TrainConfig(backbone=args.backbone, input_size=size, batch_size=args.batch)
    weights = args.weights or None
    policy = PRECISIONS[args.precision]
    print(f"\n## training throughput: {args.backbone} {args.size} px, batch {args.batch}, {len(listing)} images, "
          f"{policy}, weights {weights}")
    print("| phase | real path | real path, no warps | in-memory uint8 | real / in-memory |")
    print("|---|---|---|---|---|")
    phases = [("head (frozen backbone)", False)] + ([("fine-tune", True)] if recipe.fine_tune_from and weights else [])
    for name, fine in phases:
        net = build_net(recipe, list("abcde"), size, weights, config, prep, policy, fine)
        net.wrapper.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                            jit_compile="auto")
        real = _fit_rate(net.wrapper, feeder(cache, targets, rows, args.batch, shuffle=True, seed=0,
                                              augmentation=Augmentation()), len(rows), args.epochs)
        plain = _fit_rate(net.wrapper, feeder(cache, targets, rows, args.batch, shuffle=True, seed=0,
                                               augmentation=Augmentation(rotation_degrees=0, zoom=0)),
                          len(rows), args.epochs)
        memory = _fit_rate(net.wrapper, in_memory, len(rows), args.epochs, args.batch, targets)
        print(f"| {name} | {real:.1f} | {plain:.1f} | {memory:.1f} | {real / memory:.2f} |")


def augmentation_formulations(args) -> None:
    """Geometric augmentation: OpenCV warps on host threads vs Keras' batched layers."""
    from concurrent.futures import ThreadPoolExecutor

    import keras

    from edgecls.augment import Augmentation

    batch = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    aug = Augmentation()
    workers = max(2, min(8, os.cpu_count() or 2))
    chunks = np.array_split(np.arange(len(batch)), workers)
    with ThreadPoolExecutor(workers) as pool:
        def host():
            list(pool.map(lambda c: aug.warp_batch(batch[c], np.random.default_rng(int(c[0]))), chunks))

        host()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 2:
            host()
            n += len(batch)
        host_rate = n / (time.perf_counter() - start)
    layers = keras.Sequential([keras.layers.RandomRotation(15 / 360), keras.layers.RandomZoom(0.1)])
    x = keras.ops.convert_to_tensor(batch.astype("float32"))
    fn = layers if keras.backend.backend() != "jax" else None
    if keras.backend.backend() == "jax":
        import jax

        fn = jax.jit(lambda v: layers(v, training=True))
    else:
        import tensorflow as tf

        fn = tf.function(lambda v: layers(v, training=True), jit_compile=False)
    keras.ops.convert_to_numpy(fn(x))
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 2:
        keras.ops.convert_to_numpy(fn(x))
        n += len(batch)
    device_rate = n / (time.perf_counter() - start)
    print(f"\n## geometric augmentation, {args.size} px, batch {args.batch}")
    print(f"OpenCV warpAffine on {workers} host threads: {host_rate:.0f} img/s; "
          f"Keras RandomRotation+RandomZoom batched on the device: {device_rate:.0f} img/s")


def large(args, files: list[Path]) -> None:
    """Cache for a set bigger than the RAM budget, then one epoch over all of it with a tiny model."""
    import keras

    from edgecls.cache import build_cache, clean_caches
    from edgecls.preprocess import Preprocessing
    from edgecls.train import feeder, training_model

    import psutil

    prep = Preprocessing.named("tf", (args.large_size, args.large_size))
    listing = (files * (args.large // len(files) + 1))[: args.large]
    root = Path(tempfile.mkdtemp(prefix="edgecls_bench_large_"))
    try:
        start = time.perf_counter()
        cache = build_cache(listing, prep, root=root, workers=os.cpu_count())
        build = time.perf_counter() - start
        gb = cache.images.nbytes / 1e9
        print(f"\n## larger than memory: {len(listing)} images at {args.large_size} px = {gb:.2f} GB of pixels")
        print(f"cache build: {len(listing) / build:.0f} img/s on {os.cpu_count()} cores ({build:.0f} s)")
        inputs = keras.Input((args.large_size, args.large_size, 3), name="image")
        x = keras.layers.AveragePooling2D(8)(inputs)
        x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        tiny = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
        from edgecls.augment import Augmentation

        wrapper = training_model(tiny, prep, Augmentation(rotation_degrees=0, zoom=0), 0)
        wrapper.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        targets = np.random.default_rng(0).integers(0, 5, len(listing))
        feed = feeder(cache, targets, np.arange(len(listing)), 64, shuffle=True, seed=0)
        start = time.perf_counter()
        wrapper.fit(feed, epochs=1, verbose=0, shuffle=False)
        epoch = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB (Linux)
        now = psutil.Process().memory_info().rss / 1e9
        print(f"one epoch over the whole cache: {len(listing) / epoch:.0f} img/s ({epoch:.0f} s); "
              f"peak RSS {peak:.2f} GB, RSS now {now:.2f} GB (pixels: {gb:.2f} GB)")
    finally:
        clean_caches(root)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--weights", default=str(shared() / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"),
                    help="pretrained weights (the head phase needs a frozen backbone); '' for none")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=320, help="images per training epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is warm-up)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--decode-images", type=int, default=800)
    ap.add_argument("--large", type=int, default=0, help="images in the larger-than-memory check (0: skip)")
    ap.add_argument("--large-size", type=int, default=224)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: cache,train,aug")
    args = ap.parse_args()
    for name in ("size", "batch", "images", "decode_images", "large_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first is warm-up)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    files = photos()
    if not files:
        sys.exit(f"no shared photos under {shared()}: set EDGECLS_ASSETS")
    skip = set(args.skip.split(","))
    if "cache" not in skip:
        cache_build(args, files)  # first: worker processes fork fast while no TensorFlow/JAX is loaded
    header(args)
    if "aug" not in skip:
        augmentation_formulations(args)
    if "train" not in skip:
        throughput(args, files)
    if args.large:
        large(args, files)


if __name__ == "__main__":
    main()
