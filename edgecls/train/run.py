"""`train` and `resume`: load the data, plan the phases, fit them, save the float32 inference model."""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..augment import Augmentation
from ..errors import DatasetError, OptionError
from ..files import remove_partial_writes
from ..keras_model import keras as _keras
from ..models import Recipe, resolve_weights
from ..outputs import LOCK_NAME, output_lock, refuse_overlaps
from . import decide
from .checkpoint import Checkpoint
from .config import DEFAULT_FINE_TUNE_EPOCHS, TrainConfig, TrainResult
from .drift import check_unchanged, read_record, write_record
from .device import accelerator, clear_distribution, phase_policy, set_determinism, set_distribution
from .feed import TrainingData, feeder, fingerprint, load_data
from .network import build_net, trains_whole
from .outputs import clear_outputs, write_outputs
from .phases import fine_tune_epochs, fit_phases


def train(dataset: str | Path, out_dir: str | Path, config: TrainConfig, console=None) -> TrainResult:
    """Train a classifier on an image-folder dataset and save model, labels, history and plots.

    In a multi-process run (`edgecls.distributed`: KERAS_DISTRIBUTION_* or SLURM) every process
    calls it; process 0 alone writes, and the others return its result (their metrics without
    per-class figures and confusion matrices: OUT/metrics.json has them)."""
    config.validate()
    session = _join(config)
    out_dir = Path(out_dir)
    refuse_overlaps({"dataset": dataset}, folders={"--out": out_dir})
    checkpoint = Checkpoint(out_dir, writes=session.is_writer)
    with _writer_lock(session, out_dir, "edgecls train"):
        if session.is_writer:
            clear_outputs(out_dir)
            checkpoint.start(Path(dataset).resolve(), config)
        return _run(Path(dataset), out_dir, config, checkpoint, None, console, session, fresh=True)


def resume(out_dir: str | Path, console=None, on_recorded_files: bool = False) -> TrainResult:
    """Continue a killed `train` from its last completed epoch (same phase, optimizer state), on
    the files and split it began with. A dataset changed since (files added, removed or replaced,
    a new class) is a DatasetError; with `on_recorded_files` the run goes on reading only the
    recorded files, as long as all of them are still there. In a multi-process run on every
    process, from process 0's checkpoint."""
    from ..console import make_console

    session = _join(None)
    console = console or make_console(stderr=True)
    out_dir = Path(out_dir)
    checkpoint = Checkpoint(out_dir, writes=session.is_writer)
    dataset, config = checkpoint.shared_run(session)
    config.validate()
    _check_processes(session.settings, config)
    with _writer_lock(session, out_dir, "edgecls train --resume"):
        record = _recorded_files(session, checkpoint, dataset, on_recorded_files, console)
        if session.is_writer:
            clear_outputs(out_dir)
        return _run(dataset, out_dir, config, checkpoint, checkpoint.shared_load(session), console, session, record)


def _writer_lock(session, out_dir: Path, command: str):
    """One run per output folder (`output_lock`), held by the process that writes there."""
    return output_lock(out_dir, command) if session.is_writer else nullcontext()


def _recorded_files(session, checkpoint: Checkpoint, dataset: Path, on_recorded_files: bool, console) -> dict | None:
    """The files and split the run began with (`drift`), read and checked against the dataset by
    process 0 (its disk holds the checkpoint) and handed to every process, so that all read the
    same files; None for a checkpoint written before files were recorded."""
    record, failure = None, None
    if session.is_writer:
        try:
            record = read_record(checkpoint.dir)
            if record is not None:
                check_unchanged(dataset, checkpoint.dir, record, on_recorded_files, console)
            elif checkpoint.state_path.exists():
                console.print("note: this checkpoint was written by an edgecls that did not record the run's files; "
                              "changes to the dataset since cannot be detected", markup=False, highlight=False)
        except DatasetError as exc:
            if not session.distributed:
                raise
            failure = exc
    if not session.distributed:
        return record
    # The refusal reaches every process; the record goes as bytes through a collective (the file
    # list of a large dataset would outgrow the coordination service's messages).
    text = json.dumps(record).encode() if session.is_writer else b""
    header = json.loads(session.share("recorded files", json.dumps(
        {"error": str(failure) if failure else None, "size": len(text)}) if session.is_writer else None))
    if failure is not None:
        raise failure
    if header["error"]:
        raise DatasetError(header["error"])
    mine = np.frombuffer(text, np.uint8) if session.is_writer else np.zeros(header["size"], np.uint8)
    (received,) = session.broadcast([mine])
    return json.loads(received.tobytes().decode())


def _join(config: TrainConfig | None):
    """This process's place in the run (`edgecls.distributed.initialize`): first of all, before
    anything starts JAX's backend, which must know the other processes from its start."""
    from .. import distributed

    settings = distributed.from_env()
    if config is not None:
        _check_processes(settings, config)
    return distributed.initialize(settings)


def _check_processes(settings, config: TrainConfig) -> None:
    if settings.distributed and not config.data_parallel:
        raise OptionError(f"the environment describes a run of {settings.num_processes} processes "
                          f"({settings.source}); training on several processes needs data_parallel "
                          "(edgecls train only: cv and tune run in one process)", "data_parallel")


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


def _phases(config: TrainConfig, recipe: Recipe, loaded: TrainingData, whole: bool, console, session) -> list[tuple]:
    """(phase, epochs, learning rate) of each phase that may run. Where fine-tuning is decided
    from the data (`decide`), after phase 1, phase 2 is listed and runs only if that decision
    fell back to the photo count and it says so."""
    if decide.measured(config, whole, session) and recipe.fine_tune_from:
        return [(1, config.epochs, config.learning_rate), (2, DEFAULT_FINE_TUNE_EPOCHS, config.fine_tune_learning_rate)]
    epochs = fine_tune_epochs(config, len(loaded.train), whole, console)
    if epochs and whole:
        console.print("no fine-tuning phase: without pretrained weights the whole network trained from the start")
    fine_tune = bool(epochs and recipe.fine_tune_from and not whole)
    return [(1, config.epochs, config.learning_rate)] + (
        [(2, epochs, config.fine_tune_learning_rate)] if fine_tune else [])


def _feeds(config: TrainConfig, loaded: TrainingData, devices: int, session) -> tuple:
    """The training feeder (augmented, oversampled when asked) and the validation feeder, each
    feeding this process's share of every batch."""
    from ..imbalance import oversampled

    images, targets = loaded.cache, loaded.folder.targets
    augmentation = Augmentation(flip=config.flip) if config.augment else None
    train_rows = oversampled(loaded.train, targets, config.seed) if config.oversample else loaded.train
    share = (session.process_id, session.num_processes)
    return (feeder(images, targets, train_rows, config.batch_size, shuffle=True, seed=config.seed,
                   augmentation=augmentation, multiple=devices, share=share),
            feeder(images, targets, loaded.val, config.batch_size, shuffle=False, seed=config.seed, multiple=devices,
                   share=share))


def _run(dataset: Path, out_dir: Path, config: TrainConfig, checkpoint: Checkpoint, resumed: dict | None,
         console, session, record: dict | None = None, fresh: bool = False) -> TrainResult:
    from ..console import make_console

    # The other processes of a run keep quiet: process 0 speaks for the run (errors still show).
    console = (console or make_console(stderr=True)) if session.is_writer else make_console(stderr=True, quiet=True)
    recipe = config.validate()
    weights = resolve_weights(config.weights or recipe.weights)
    input_size = tuple(config.input_size or recipe.input_size)
    preprocessing = recipe.preprocessing(input_size, config.resize)
    loaded = load_data(dataset, config, preprocessing, console, record)
    if record is None and session.is_writer:  # what a resume must find again
        write_record(checkpoint.dir, loaded.folder, loaded.split)
    if session.distributed:
        _agree(session, config, loaded, out_dir, checkpoint, fresh)
    labels = list(loaded.folder.classes)
    device, deterministic = _backend(config)
    devices = set_distribution(config, session)
    whole = trains_whole(recipe, weights)
    phases = _phases(config, recipe, loaded, whole, console, session)
    policies = {phase: phase_policy(config.precision, phase, device, whole) for phase, _, _ in phases}

    def build(policy: str, fine_tuning: bool):
        return build_net(recipe, labels, input_size, weights, config, preprocessing, policy, fine_tuning)

    class_weight = class_weights(loaded.folder.targets[loaded.train], len(labels)) if config.class_weights else None
    feeds = _feeds(config, loaded, devices, session)
    if session.distributed:
        session.check_same("the batches per epoch", f"{len(feeds[0])} training, {len(feeds[1])} validation")
    try:
        net, history, phase_boundary = fit_phases(build, phases, policies, feeds, config, checkpoint, resumed,
                                                  class_weight, console, recipe.fine_tune_from, whole, session)
        cv_estimate, decision = net.cv_estimate, net.fine_tune_decision
        if config.refit_all and cv_estimate is None:  # a resume after the head was fitted: the estimate is gone
            raise EdgeclsError(f"{out_dir}: this --refit-all run was resumed after its head was fitted and its CV "
                               "estimate was not kept; run it again without --resume")
        net = _saved_copy(net, build, len(phases) > 1, config, session)
    finally:
        clear_distribution(config)
    if not session.is_writer:  # done: from here on, losing this process no longer stops process 0
        return _result_of(json.loads(session.finish()), out_dir, labels, loaded)
    training = {"backend": _keras().backend.backend(), "device": device, "devices": devices,
                "processes": session.num_processes,
                "precision": {f"phase {p}": v for p, v in policies.items()}, "deterministic": deterministic,
                "resumed": resumed is not None, "cache": str(loaded.cache.path),
                "fine_tune_decision": decision}
    result = write_outputs(net.inference, out_dir, dataset, config, recipe, loaded, preprocessing, history,
                           phase_boundary, training, cv_estimate)
    checkpoint.remove()
    if session.distributed:
        # The summary only: a confusion matrix of many classes would outgrow the coordination
        # service's messages (metrics.json holds everything).
        summary = {split: {k: v for k, v in m.items() if k not in ("per_class", "confusion_matrix")}
                   if isinstance(m, dict) else m for split, m in result.metrics.items()}
        session.finish(json.dumps({"metrics": summary, "history": result.history, "warnings": result.warnings}))
    return result


def _saved_copy(net, build, fine_tuned: bool, config: TrainConfig, session):
    """What is saved and exported: the float32 inference model on one device (a copy where the
    run trained under another precision or data parallel)."""
    if not session.is_writer or (net.policy == "float32" and not config.data_parallel):
        return net
    clear_distribution(config)
    copy = build("float32", fine_tuned)
    copy.inference.set_weights(net.inference.get_weights())
    return copy


def _agree(session, config: TrainConfig, loaded: TrainingData, out_dir: Path, checkpoint: Checkpoint,
           fresh: bool) -> None:
    """The processes of a run check that they hold the same data and options, and learn what
    to remove if a lost peer ends this one in the middle of a write. A new run refused here
    leaves no checkpoint (its config and file record): there is nothing to resume."""
    agreed: list[bool] = []
    if session.is_writer and fresh:
        # A cleanup, not an `except`: the other process's refusal ends this one from the watchdog.
        session.add_cleanup(lambda: agreed or checkpoint.remove())
    session.check_same("the dataset", fingerprint(loaded))
    # The cache folder and decoding workers are each host's own business.
    options = {k: v for k, v in asdict(config).items() if k not in ("cache_dir", "workers")}
    session.check_same("the training options", json.dumps(options, sort_keys=True))
    agreed.append(True)
    if session.is_writer:
        session.add_cleanup(checkpoint.remove_partial)
        session.add_cleanup(lambda: remove_partial_writes(out_dir))
        session.add_cleanup(lambda: (out_dir / LOCK_NAME).unlink(missing_ok=True))  # an exit skips output_lock's own


def _result_of(record: dict, out_dir: Path, labels: list[str], loaded: TrainingData) -> TrainResult:
    """Process 0's result, in another process of the run."""
    return TrainResult(out_dir / "model.keras", out_dir, labels, record["metrics"], record["history"],
                       loaded.skipped, record["warnings"])
