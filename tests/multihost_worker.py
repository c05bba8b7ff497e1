"""One process of the multi-process tests (tests/test_multihost.py); not collected by pytest.

    python tests/multihost_worker.py fit OUT   # a tiny Keras model, data parallel over every process
    python tests/multihost_worker.py collect   # all-gathers in a loop, as training does, for 60 s
    python tests/multihost_worker.py idle      # joins, then sleeps for 60 s
    python tests/multihost_worker.py fail      # joins, then fails as the CLI does on a bad picture
    python tests/multihost_worker.py disagree  # receives process 0's text, then claims other data

Who it is comes from the environment (`edgecls.distributed.from_env`); without the variables it is
the single-process reference. Prints READY once joined and, for `fit`, the weights' digest.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ["KERAS_BACKEND"] = "jax"
# Nothing here uses TensorFlow; keras.utils.set_random_seed would import it just to seed it,
# which costs each process several seconds of CPU. A blocked import makes Keras skip it.
sys.modules["tensorflow"] = None
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecls import distributed  # noqa: E402
from edgecls.augment import Augmentation, keras_layers  # noqa: E402
from edgecls.errors import EdgeclsError  # noqa: E402

GLOBAL_BATCH, STEPS, EPOCHS, SEED = 8, 4, 2, 7
# The trainer cuts batches to a multiple of the run's device count; the single-process reference
# must cut the same way (to the two-process run's count) to see the same batches.
MULTIPLE = 2


def fit(session: distributed.Session, out: Path) -> None:
    import keras

    keras.utils.set_random_seed(SEED)
    data = np.random.default_rng(0)
    images = data.integers(0, 256, (GLOBAL_BATCH * STEPS + 3, 8, 8, 3), dtype=np.uint8)  # +3: a tail cut to 2
    labels = data.integers(0, 3, len(images))
    devices = keras.distribution.list_devices()
    if session.distributed:
        # The feed below is already this process's share: Keras must not shard it again.
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    warp = Augmentation(flip=False)

    class Feed(keras.utils.PyDataset):
        epoch = 0

        def __len__(self):
            return distributed.batch_count(len(images), GLOBAL_BATCH, MULTIPLE)

        def __getitem__(self, i):
            order = np.random.default_rng([SEED, self.epoch]).permutation(len(images))
            rows, offset = session.local_rows(distributed.global_batch(order, i, GLOBAL_BATCH, MULTIPLE))
            x = warp.warp_batch(images[rows], np.random.default_rng([SEED, self.epoch, i]), skip=offset)
            return x, labels[rows]

    feed = Feed(workers=1, use_multiprocessing=False)
    session.check_same("steps per epoch", str(len(feed)))

    class Epoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            feed.epoch = epoch

    layers = keras_layers()
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = layers["ToFloat"]()(inputs)
    # The trainer's in-model augmentation: its random draws must be those of one process.
    x = layers["InModelAugment"](flip=True, contrast=0.1, brightness=0.05, seed=3)(x)
    x = layers["Normalize"](1 / 255.0, [0.5] * 3, [0.25] * 3)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)               # batch statistics over the global batch
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3, seed=5)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    initial = np.concatenate([np.asarray(w).ravel() for w in model.weights])
    history = model.fit(feed, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[Epoch()])
    weights = [np.asarray(w) for w in model.weights]
    flat = np.concatenate([w.ravel() for w in weights])
    print(f"LOSS {history.history['loss']}", flush=True)
    print(f"DIGEST {hashlib.sha256(flat.tobytes()).hexdigest()} moved {float(np.abs(flat - initial).max()):.4f}", flush=True)
    if session.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".weights.{os.getpid()}.tmp.npz"
        np.savez(tmp, *weights)
        tmp.replace(out / "weights.npz")
    session.finish()


def collect(session: distributed.Session) -> None:
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    try:
        for _ in range(300):
            multihost_utils.process_allgather(jnp.array([session.process_id]))
            time.sleep(0.2)
    except Exception as exc:  # noqa: BLE001 - what the trainer does: tell the others, leave
        session.abort(exc)
    session.finish()


def main() -> None:
    mode = sys.argv[1]
    session = distributed.initialize()
    print(f"READY {session.process_id} {os.getpid()}", flush=True)
    if mode == "fit":
        fit(session, Path(sys.argv[2]))
    elif mode == "collect":
        collect(session)
    elif mode == "disagree":
        print(f"SHARED {session.share('record', 'from process 0' if session.is_writer else None)}", flush=True)
        try:
            session.check_same("dataset", "3 files")  # agreed; the second use of the name is a new question
            session.check_same("dataset", f"{3 + session.process_id} files")
        except EdgeclsError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            session.abort(error, 2)
    elif mode == "fail":
        error = EdgeclsError("bad picture: broken.jpg")
        print(f"error: {error}", file=sys.stderr, flush=True)  # what the CLI prints, then exit status 2
        session.abort(error, 2)
    else:
        time.sleep(60)
        session.finish()


if __name__ == "__main__":
    main()
