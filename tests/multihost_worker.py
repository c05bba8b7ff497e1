"""One process of the multi-process tests (tests/test_multihost.py); not collected by pytest.

    python tests/multihost_worker.py head OUT  # the trainer's feature head over a tiny frozen backbone
    python tests/multihost_worker.py collect   # all-gathers in a loop, as training does, for 60 s
    python tests/multihost_worker.py idle      # joins, then sleeps for 60 s
    python tests/multihost_worker.py fail      # joins, then fails as the CLI does on a bad picture
    python tests/multihost_worker.py disagree  # receives process 0's text, then claims other data

Who it is comes from the environment (`edgecls.distributed.from_env`); without the variables it is
the single-process reference. Prints READY once joined and, for `head`, the head's digest.
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
from edgecls.errors import EdgeclsError  # noqa: E402

GLOBAL_BATCH, STEPS, SEED = 8, 4, 7
# The trainer cuts batches to a multiple of the run's device count; the single-process reference
# must cut the same way (to the two-process run's count) to see the same batches.
MULTIPLE = 2


def head(session: distributed.Session, out: Path) -> None:
    """The trainer's feature head (phase 1 by default) on a tiny frozen backbone: features of the
    picture, its mirror and four crops, each process computing its share of every batch."""
    import keras
    from rich.console import Console

    from edgecls.preprocess import Preprocessing
    from edgecls.train.config import TrainConfig
    from edgecls.train.feature_head import fit_feature_head
    from edgecls.train.feed import feeder
    from edgecls.train.network import Net, training_model

    keras.utils.set_random_seed(SEED)
    data = np.random.default_rng(1)
    images = data.integers(0, 256, (GLOBAL_BATCH * STEPS + 11, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(len(images)) % 3
    train, val = np.arange(GLOBAL_BATCH * STEPS + 3), np.arange(GLOBAL_BATCH * STEPS + 3, len(images))
    backbone = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(6, 3, activation="relu")])
    backbone.trainable = False
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    inference = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(features))
    preprocessing = Preprocessing.named("unit", (16, 16))
    net = Net(inference, backbone, training_model(inference, preprocessing, None, SEED), "float32")
    share = (session.process_id, session.num_processes)
    feeds = tuple(feeder(images, labels, rows, GLOBAL_BATCH, shuffle=shuffle, seed=SEED, multiple=MULTIPLE, share=share)
                  for rows, shuffle in ((train, True), (val, False)))
    config = TrainConfig(batch_size=GLOBAL_BATCH, seed=SEED, head_c=1.0)
    history = fit_feature_head(net, feeds, config, None, Console(quiet=True), crops=True, session=session)
    kernel, bias = net.inference.get_layer("probabilities").get_weights()
    print(f"HISTORY {history}", flush=True)
    print(f"DIGEST {hashlib.sha256(kernel.tobytes() + bias.tobytes()).hexdigest()}", flush=True)
    if session.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "head.npz", kernel=kernel, bias=bias)
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
    if mode == "head":
        head(session, Path(sys.argv[2]))
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
