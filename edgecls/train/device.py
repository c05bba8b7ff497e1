"""Device policy: which accelerator computes, the dtype policy per phase, deterministic kernels,
and data parallelism over several devices."""
from __future__ import annotations

import contextlib
import os

from ..errors import OptionError
from ..keras_model import keras as _keras
from .config import PRECISIONS, TrainConfig


def accelerator() -> str:
    """'gpu' (or 'tpu') when the Keras backend computes on an accelerator, else 'cpu'."""
    backend = _keras().backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def phase_policy(precision: str, phase: int, device: str, whole: bool = False) -> str:
    """The Keras dtype policy for a phase. `auto` is float32 on a CPU (no fast bf16 path there);
    on an accelerator float32 while only the head trains over a frozen backbone and
    mixed_bfloat16 when backbone layers train, as measured on an H100 with JAX (issue 9: frozen
    19,911 img/s fp32 vs 10,119 bf16; fine-tuning 5,440 bf16 vs 4,721 fp32)."""
    if precision != "auto":
        return PRECISIONS[precision]
    if device == "cpu":
        return "float32"
    return "float32" if phase == 1 and not whole else "mixed_bfloat16"


def set_determinism(on: bool) -> None:
    """Deterministic kernels (same seed, same model) or the backend's fastest ones."""
    keras = _keras()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        (tf.config.experimental.enable_op_determinism if on
         else tf.config.experimental.disable_op_determinism)()
    elif keras.backend.backend() == "jax" and on:
        # Read when JAX first initialises its GPU backend; the CLI sets it before that.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def set_distribution(config: TrainConfig, session=None) -> int:
    """Data parallelism over all devices (Keras distribution API, JAX): the local ones, or every
    process's in a multi-process `session` (`edgecls.distributed`), each process then feeding its
    own share of each batch; returns the device count."""
    if not config.data_parallel:
        return 1
    keras = _keras()
    if keras.backend.backend() != "jax":
        raise OptionError("--data-parallel needs the JAX backend (KERAS_BACKEND=jax): it uses "
                          "keras.distribution.DataParallel", "data_parallel")
    devices = keras.distribution.list_devices()  # every process's devices, once joined
    if config.batch_size % len(devices):
        raise OptionError(f"batch_size {config.batch_size} must be a multiple of the {len(devices)} devices "
                          "for --data-parallel", "batch_size")
    if session is not None and session.distributed:
        # The feeder hands Keras this process's share of each global batch already.
        distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    else:
        distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return len(devices)


def clear_distribution(config: TrainConfig) -> None:
    """Back to one device (what is saved and exported runs on one)."""
    if config.data_parallel:
        _keras().distribution.set_distribution(None)


@contextlib.contextmanager
def outside_distribution():
    """Build and run a model on this process's devices alone, whatever distribution is set."""
    keras = _keras()
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)
