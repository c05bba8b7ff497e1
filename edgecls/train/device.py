"""Device policy: which accelerator computes, the dtype policy per phase, deterministic kernels,
and data parallelism over several devices."""
from __future__ import annotations

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


def set_distribution(config: TrainConfig) -> int:
    """Data parallelism over all local devices (Keras distribution API, JAX); returns the count."""
    if not config.data_parallel:
        return 1
    keras = _keras()
    if keras.backend.backend() != "jax":
        raise OptionError("--data-parallel needs the JAX backend (KERAS_BACKEND=jax): it uses "
                          "keras.distribution.DataParallel")
    if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        keras.distribution.initialize()  # several hosts: jax.distributed from the KERAS_DISTRIBUTION_* variables
    devices = keras.distribution.list_devices()
    if config.batch_size % len(devices):
        raise OptionError(f"batch_size {config.batch_size} must be a multiple of the {len(devices)} devices "
                          "for --data-parallel")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


def clear_distribution(config: TrainConfig) -> None:
    """Back to one device (what is saved and exported runs on one)."""
    if config.data_parallel:
        _keras().distribution.set_distribution(None)
