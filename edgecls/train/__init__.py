"""Two-phase transfer learning with Keras 3 on an image-folder dataset.

`train()` (in `run`) loads the data (`feed.load_data`: scan, split, decode-once cache), fits the
phases (`phases.fit_phases`) and writes the results (`outputs.write_outputs`: the float32
inference model atomically, metrics, curves, the manifest last).

- Phase 1 fits a new head over the frozen backbone. By default (`feature_head=True`) it is a
  multinomial logistic regression on backbone features computed once, of the training photos
  as is, mirrored and in four corner crops (`feature_head`); `feature_head=False` trains a
  dense head by gradient descent instead (`gradient`).
- Phase 2 unfreezes the backbone's top layers from the recipe's `fine_tune_from` at a lower
  learning rate (`gradient`): by default only from `FINE_TUNE_MIN_IMAGES` training images up.

Feeding (`feed`): batches leave the host as uint8 slices of the memory-mapped cache
(edgecls.cache), prefetched by worker threads that also apply the geometric augmentation;
normalisation (`Preprocessing`'s, as a layer), flips and brightness/contrast run batched inside a
training-only wrapper around the inference model (`network`). Only the inference model is
saved, so the saved model and every export have float32 inputs normalised by
`Preprocessing.normalize` and contain no random ops. `device` picks dtype policies,
determinism and data parallelism.

Resume (`checkpoint`): after every epoch OUT/checkpoint/ holds the weights, optimizer state,
early-stopping state and history; `resume(OUT)` continues from the last completed epoch of the
same phase.
"""
from __future__ import annotations

import importlib
from typing import Any

# Public names by the module that defines them, loaded on first use: `import edgecls.train` (and
# `from edgecls.train.config import PRECISIONS`, which the command line's help needs) stays light.
_PUBLIC = {
    "checkpoint": ("CHECKPOINT_DIR", "Checkpoint", "assign"),
    "config": ("DEFAULT_FINE_TUNE_EPOCHS", "FINE_TUNE_MIN_IMAGES", "LR_SCHEDULES", "PRECISIONS", "PRECISION_CHOICES",
               "TrainConfig", "TrainResult", "planned_fine_tune_epochs"),
    "device": ("accelerator", "clear_distribution", "phase_policy", "set_determinism", "set_distribution"),
    "feature_head": ("fit_feature_head", "frozen_features", "logistic_head", "train_head"),
    "feed": ("BatchPlan", "TrainingData", "batches", "feeder", "load_data", "reader", "unwarped"),
    "gradient": ("epoch_callback", "fit_phase", "loss", "optimizer"),
    "network": ("Net", "build_model", "build_net", "normalize_layer", "training_model", "trains_whole", "unfreeze_top"),
    "outputs": ("OUTPUTS", "clear_outputs", "evaluate_split", "write_outputs"),
    "phases": ("fine_tune_epochs", "fit_phases"),
    "plots": ("plot_history",),
    "run": ("class_weights", "resume", "train"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
