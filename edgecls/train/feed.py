"""The data side of training: the dataset scanned, split and cached once, then fed as uint8
batches of the memory-mapped cache, prefetched by worker threads that also apply the geometric
augmentation. Every random draw follows (seed, epoch, batch), so a resumed run sees the same
batches as an uninterrupted one whatever thread computed them."""
from __future__ import annotations

import copy
import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import data as data_mod
from ..augment import Augmentation
from ..cache import ImageCache, cached_images
from ..distributed import sharding
from ..errors import EdgeclsError, OptionError
from ..keras_model import keras as _keras
from ..preprocess import Preprocessing
from .config import TrainConfig
from .drift import recorded_data


@dataclass
class TrainingData:
    """A dataset ready to feed: its files, the split, and the decoded pixels (cache)."""

    folder: data_mod.ImageFolder
    split: dict[str, np.ndarray]        # indices into folder.files, as split
    cache: ImageCache
    train: np.ndarray                   # the readable ones
    val: np.ndarray
    skipped: list[tuple[Path, str]]


def load_data(dataset: str | Path, config: TrainConfig, preprocessing: Preprocessing, console,
              recorded: dict | None = None) -> TrainingData:
    """Scan and split the dataset (or take the files and split `recorded` when the run began:
    `drift.read_record`) and open (or build) its decoded-image cache."""
    if recorded is not None:
        folder, split = recorded_data(Path(dataset), recorded)
    elif config.previous:  # a new round: the previous model's held-out photos stay held out
        from .rounds import carried_split, previous_manifest

        folder = data_mod.scan(dataset)
        split, _ = carried_split(folder, previous_manifest(config.previous)[2], config.val_fraction,
                                 config.test_fraction, config.seed)
    elif config.fold:
        folder = data_mod.scan(dataset)
        split = data_mod.fold_indices(folder.targets, *config.fold, seed=config.seed)
    elif config.refit_all:  # every photo trains; the estimate comes from CV (feature_head.cv_estimate)
        folder = data_mod.scan(dataset)
        empty = np.zeros(0, dtype=np.int64)
        split = {"train": np.arange(len(folder.files)), "val": empty, "test": empty}
    else:
        folder = data_mod.scan(dataset)
        split = data_mod.split_indices(folder.targets, config.val_fraction, config.test_fraction, config.seed)
    if len(split["val"]) == 0 and not config.refit_all:
        raise OptionError("the validation split is empty; raise --val-fraction or add images")
    cache = cached_images(folder, preprocessing, console, config.cache_dir, config.workers or None)
    what = f"decoded {len(cache)} images in {cache.seconds:.1f} s into" if cache.built else "reusing"
    console.print(f"image cache: {what} {cache.path}")
    used = np.zeros(len(folder.files), dtype=bool)
    used[split["train"]] = used[split["val"]] = True
    skipped = [(folder.files[i], reason) for i, reason in
               ((folder.files.index(p), r) for p, r in cache.skipped) if used[i]]
    if skipped:
        console.print(data_mod.skipped_summary(skipped), markup=False)
    train_idx, val_idx = split["train"][cache.ok[split["train"]]], split["val"][cache.ok[split["val"]]]
    for index, name in enumerate(folder.classes):
        if not np.any(folder.targets[train_idx] == index):
            raise EdgeclsError(f"{folder.root / name}: no readable training images for class '{name}'")
    from ..imbalance import report_class_counts

    report_class_counts(folder.classes, folder.targets[train_idx], console)
    if len(val_idx) == 0 and not config.refit_all:
        raise EdgeclsError(f"{folder.root}: no readable images in the validation split")
    return TrainingData(folder, split, cache, train_idx, val_idx, skipped)


def fingerprint(loaded: TrainingData) -> str:
    """What every process of a run must agree on about its copy of the dataset: the classes, the
    files (relative to the dataset folder, with sizes) and the split's readable pictures."""
    import hashlib

    root, digest = loaded.folder.root, hashlib.sha256()
    for part in (loaded.folder.classes, [(os.path.relpath(f, root), f.stat().st_size) for f in loaded.folder.files],
                 loaded.train.tolist(), loaded.val.tolist()):
        digest.update(repr(part).encode())
    return (f"{len(loaded.folder.files)} files in {len(loaded.folder.classes)} classes, {len(loaded.train)} training "
            f"and {len(loaded.val)} validation pictures readable, sha256 {digest.hexdigest()[:16]}")


def reader(images):
    """rows -> uint8 pictures, from an ImageCache (pread, nothing stays mapped) or an array."""
    return images.read if isinstance(images, ImageCache) else (lambda rows: np.asarray(images[rows]))


class BatchPlan:
    """Which pictures batch i of epoch e holds, read and geometrically augmented.

    The order of epoch e is a permutation seeded by (seed, e), and the warps of batch i by
    (seed, e, i). Within a batch rows are read in file order (sequential reads from the cache).
    `multiple`: batch sizes are cut to multiples of the device count. `share`: (process, count)
    in a multi-process run, where each process reads only its slice of every batch, with the
    warps the pictures get in the whole batch (`edgecls.distributed.sharding`)."""

    def __init__(self, images: np.ndarray | ImageCache, targets: np.ndarray, indices: np.ndarray, batch_size: int,
                 shuffle: bool, seed: int, augmentation: Augmentation | None = None, multiple: int = 1,
                 share: tuple[int, int] = (0, 1)):
        self.read, self.targets, self.indices = reader(images), targets, indices
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augmentation, self.multiple, self.share = augmentation, multiple, share
        self.batches = sharding.batch_count(len(indices), batch_size, multiple)
        self._order: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if self._order is None or self._order[0] != epoch:
                count = len(self.indices)
                perm = np.random.default_rng([self.seed, epoch]).permutation(count) if self.shuffle else np.arange(count)
                self._order = (epoch, self.indices[perm])
            return self._order[1]

    def batch(self, i: int, epoch: int, warp: bool = True) -> tuple[np.ndarray, np.ndarray]:
        rows = sharding.global_batch(self.order(epoch), i, self.batch_size, self.multiple)
        rows, offset = sharding.local_rows(rows, *self.share)
        x = self.read(rows)
        if warp and self.augmentation is not None and self.augmentation.geometric:
            x = self.augmentation.warp_batch(x, np.random.default_rng([self.seed, epoch, i]), skip=offset)
        return x, self.targets[rows]


class Prefetcher:
    """A BatchPlan's batches read ahead by `workers` threads, each kept under what it is (epoch,
    warps on or off, index): what a caller gets never depends on thread timing.

    Keras' own threaded reader (a PyDataset with workers > 1) is not used: when `fit` takes a
    first batch to build the model and restarts, it replays the batches its threads had read
    ahead before starting over, so the first epoch of every `fit` saw some batches twice and
    skipped others, by thread timing (measured with Keras 3.12, a 20-batch epoch: with 2 threads
    it trained on batches 2-6, 0-14; with 4 on 2-10, 0-10)."""

    def __init__(self, plan: BatchPlan, workers: int):
        self.plan, self.workers = plan, workers
        self._pending: dict[tuple[int, bool, int], Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self, i: int, epoch: int, warp: bool) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            for key in [k for k in self._pending if k[:2] != (epoch, warp) or k[2] < i]:
                self._pending.pop(key).cancel()  # another epoch's, or passed: never asked for now
            future = self._pending.pop((epoch, warp, i), None)
            if self.workers > 1:
                self._pool = self._pool or ThreadPoolExecutor(self.workers, thread_name_prefix="edgecls-feed")
                for j in range(i + 1, min(i + 1 + 2 * self.workers, self.plan.batches)):
                    if (epoch, warp, j) not in self._pending:
                        self._pending[(epoch, warp, j)] = self._pool.submit(self.plan.batch, j, epoch, warp)
        return future.result() if future is not None else self.plan.batch(i, epoch, warp)


@functools.cache
def _feed_class():
    """keras.utils.PyDataset over a BatchPlan; a subclass made on first use, so that importing
    the trainer does not import Keras."""

    class Feed(_keras().utils.PyDataset):
        def __init__(self, plan: BatchPlan, workers: int):
            # workers=1: Keras asks for batch after batch in order; the threads are the Prefetcher's.
            super().__init__(workers=1, use_multiprocessing=False)
            self.plan = plan
            self.prefetcher = Prefetcher(plan, workers)
            self.epoch = 0              # set by the training callback when an epoch begins
            self.augmentation_off = False

        def __len__(self):
            return self.plan.batches

        def __getitem__(self, i):
            if not 0 <= i < self.plan.batches:
                raise IndexError(f"batch {i} of {self.plan.batches}")
            return self.prefetcher.get(i, self.epoch, warp=not self.augmentation_off)

    return Feed


def feeder(images: np.ndarray | ImageCache, targets: np.ndarray, indices: np.ndarray, batch_size: int, *,
           shuffle: bool, seed: int, augmentation: Augmentation | None = None, multiple: int = 1, workers: int = 0,
           share: tuple[int, int] = (0, 1)):
    """uint8 batches (and targets) from the cache as a Keras PyDataset, prefetched by worker
    threads (see `BatchPlan` for the order and `share`, `Prefetcher` for the threads);
    `feed.epoch` selects the epoch's order."""
    workers = workers or max(2, min(8, os.cpu_count() or 2))
    plan = BatchPlan(images, targets, indices, batch_size, shuffle, seed, augmentation, multiple, share)
    return _feed_class()(plan, workers)


def unwarped(feed):
    """The same feeder without its host-side warps (features are computed once, unaugmented)."""
    clone = copy.copy(feed)
    clone.augmentation_off = True
    return clone


def batches(images: np.ndarray, targets: np.ndarray, preprocessing: Preprocessing, batch_size: int,
            augmentation: Augmentation | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the inference model receives in training: the feeder's uint8 batches through the
    training wrapper's normalisation layer (without the random in-model augmentation)."""
    from .network import normalize_layer

    feed = feeder(images, targets, np.arange(len(images)), batch_size, shuffle=False, seed=seed,
                  augmentation=augmentation)
    normalize = normalize_layer(preprocessing)
    return [(np.asarray(normalize(x)), y) for x, y in (feed[i] for i in range(len(feed)))]
