"""`train` and `resume`: load the data, plan the phases, fit them, save the float32 inference model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..augment import Augmentation
from ..errors import EdgeclsError
from ..keras_model import keras as _keras
from ..manifest import manifest_path
from ..models import Recipe, resolve_weights
from .checkpoint import Checkpoint
from .config import TrainConfig, TrainResult
from .device import accelerator, clear_distribution, phase_policy, set_determinism, set_distribution
from .feed import TrainingData, feeder, load_data
from .network import build_net, trains_whole
from .outputs import clear_outputs, write_outputs
from .phases import fine_tune_epochs, fit_phases


def train(dataset: str | Path, out_dir: str | Path, config: TrainConfig, console=None) -> TrainResult:
    """Train a classifier on an image-folder dataset and save model, labels, history and plots."""
    config.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(out_dir)
    checkpoint = Checkpoint(out_dir)
    checkpoint.start(Path(dataset).resolve(), config)
    return _run(Path(dataset), out_dir, config, checkpoint, None, console)


def resume(out_dir: str | Path, console=None) -> TrainResult:
    """Continue a killed `train` from its last completed epoch (same phase, optimizer state)."""
    out_dir = Path(out_dir)
    checkpoint = Checkpoint(out_dir)
    if not checkpoint.config_path.exists():
        done = " (that run finished)" if manifest_path(out_dir / "model.keras").exists() else ""
        raise EdgeclsError(f"{out_dir}: no checkpoint to resume{done}; expected {checkpoint.config_path}")
    dataset, config = checkpoint.run()
    config.validate()
    clear_outputs(out_dir)
    return _run(dataset, out_dir, config, checkpoint, checkpoint.load(), console)


def class_weights(targets: np.ndarray, num_classes: int) -> dict[int, float]:
    """Loss weights inversely proportional to class frequency (classes absent from `targets` get none)."""
    counts = np.bincount(targets, minlength=num_classes)
    return {i: float(len(targets) / (num_classes * c)) for i, c in enumerate(counts) if c}


def _backend(config: TrainConfig) -> tuple[str, bool]:
    """Seeds, determinism and the accelerator: (device, deterministic)."""
    _keras().utils.set_random_seed(config.seed)
    if config.deterministic:
        set_determinism(True)  # before the backend initialises: XLA reads its flags once
    device = accelerator()
    deterministic = (device == "cpu") if config.deterministic is None else config.deterministic
    set_determinism(deterministic)
    return device, deterministic


def _phases(config: TrainConfig, recipe: Recipe, loaded: TrainingData, whole: bool, console) -> list[tuple]:
    """(phase, epochs, learning rate) of each phase that runs."""
    epochs = fine_tune_epochs(config, len(loaded.train), whole, console)
    if epochs and whole:
        console.print("no fine-tuning phase: without pretrained weights the whole network trained from the start")
    fine_tune = bool(epochs and recipe.fine_tune_from and not whole)
    return [(1, config.epochs, config.learning_rate)] + (
        [(2, epochs, config.fine_tune_learning_rate)] if fine_tune else [])


def _feeds(config: TrainConfig, loaded: TrainingData, devices: int) -> tuple:
    """The training feeder (augmented, oversampled when asked) and the validation feeder."""
    from ..imbalance import oversampled

    images, targets = loaded.cache, loaded.folder.targets
    augmentation = Augmentation(flip=config.flip) if config.augment else None
    train_rows = oversampled(loaded.train, targets, config.seed) if config.oversample else loaded.train
    return (feeder(images, targets, train_rows, config.batch_size, shuffle=True, seed=config.seed,
                   augmentation=augmentation, multiple=devices),
            feeder(images, targets, loaded.val, config.batch_size, shuffle=False, seed=config.seed, multiple=devices))


def _run(dataset: Path, out_dir: Path, config: TrainConfig, checkpoint: Checkpoint, resumed: dict | None,
         console) -> TrainResult:
    from rich.console import Console

    console = console or Console(stderr=True)
    recipe = config.validate()
    weights = resolve_weights(config.weights or recipe.weights)
    input_size = tuple(config.input_size or recipe.input_size)
    preprocessing = recipe.preprocessing(input_size, config.resize)
    whole = trains_whole(recipe, weights)
    loaded = load_data(dataset, config, preprocessing, console)
    labels = list(loaded.folder.classes)
    device, deterministic = _backend(config)
    devices = set_distribution(config)
    phases = _phases(config, recipe, loaded, whole, console)
    policies = {phase: phase_policy(config.precision, phase, device, whole) for phase, _, _ in phases}

    def build(policy: str, fine_tuning: bool):
        return build_net(recipe, labels, input_size, weights, config, preprocessing, policy, fine_tuning)

    class_weight = class_weights(loaded.folder.targets[loaded.train], len(labels)) if config.class_weights else None
    try:
        net, history, phase_boundary = fit_phases(build, phases, policies, _feeds(config, loaded, devices), config,
                                                  checkpoint, resumed, class_weight, console, recipe.fine_tune_from)
        cv_estimate = net.cv_estimate
        if config.refit_all and cv_estimate is None:  # a resume after the head was fitted: the estimate is gone
            raise EdgeclsError(f"{out_dir}: this --refit-all run was resumed after its head was fitted and its CV "
                               "estimate was not kept; run it again without --resume")
        if net.policy != "float32" or config.data_parallel:
            # What is saved and exported: the float32 inference model on one device.
            clear_distribution(config)
            copy = build("float32", len(phases) > 1)
            copy.inference.set_weights(net.inference.get_weights())
            net = copy
    finally:
        clear_distribution(config)
    training = {"backend": _keras().backend.backend(), "device": device, "devices": devices,
                "precision": {f"phase {p}": v for p, v in policies.items()}, "deterministic": deterministic,
                "resumed": resumed is not None, "cache": str(loaded.cache.path)}
    result = write_outputs(net.inference, out_dir, dataset, config, recipe, loaded, preprocessing, history,
                           phase_boundary, training, cv_estimate)
    checkpoint.remove()
    return result
