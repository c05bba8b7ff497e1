"""`edgecls train`: transfer learning from an image-folder dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import OptionError
from ..train.config import LR_SCHEDULES, PRECISION_CHOICES, TrainConfig
from .common import command, err, escape, folder_option, parse_size, show, speaks
from .options import training_options

DEFAULT = TrainConfig()

# The options only `train` has (those it shares with cv and tune are in options.TRAINING).
DatasetOrResume = Annotated[Optional[Path], typer.Argument(help="Image-folder dataset: one sub-folder per class.")]
Out = Annotated[Path, typer.Option(help="Output folder.")]
FeatureHead = Annotated[bool, typer.Option(
    "--feature-head/--gradient-head", help="Phase 1 as a logistic regression on backbone features computed once "
    "(default), or a head trained by gradient descent.")]
FineTuneLearningRate = Annotated[float, typer.Option()]
LabelSmoothing = Annotated[float, typer.Option(help="Label smoothing of gradient-trained phases, in [0, 1).")]
WeightDecay = Annotated[float, typer.Option(help="AdamW decoupled weight decay of gradient-trained phases (0: Adam).")]
Schedule = Annotated[str, typer.Option(help=f"{' | '.join(LR_SCHEDULES)} (cosine: one warm-up epoch, then cosine "
                                            "decay).")]
Fraction = Annotated[float, typer.Option()]
Patience = Annotated[int, typer.Option(help="Early stopping patience on validation loss.")]
Flip = Annotated[bool, typer.Option(help="Horizontal flips in augmentation (turn off for digits or text).")]
Precision = Annotated[str, typer.Option(help=f"{' | '.join(PRECISION_CHOICES)} (mixed precision; the saved model "
                                             "is float32).")]
Deterministic = Annotated[Optional[bool], typer.Option(
    "--deterministic/--no-deterministic", help="Reproducible kernels (default: on for CPU, off on a GPU).")]
DataParallel = Annotated[bool, typer.Option(help="Data parallel over all local devices, or over every process's in "
                                                "a multi-process run (KERAS_BACKEND=jax; README: Training on several "
                                                "machines).")]
Resume = Annotated[Optional[Path], typer.Option(help="Continue the killed run in this output folder from its last epoch, "
                                                     "with its own dataset and options.")]
OnRecordedFiles = Annotated[bool, typer.Option(
    "--on-recorded-files", help="With --resume, when the dataset changed since the run began: continue on the files "
    "recorded then (new files left out, replaced ones read as they are now).")]
RefitAll = Annotated[bool, typer.Option(
    help="Fit the shipped model on every photo (no validation hold-back); the accuracy estimate is k-fold CV of "
         "the same recipe, recorded as such. Feature head without fine-tuning only.")]
CvFolds = Annotated[int, typer.Option(help="Folds of --refit-all's CV estimate.")]
Previous = Annotated[Optional[str], typer.Option(help="A new round: the previous round's run folder (or model). Its "
                                                     "held-out photos stay held out, only new photos are split, and "
                                                     "OUT/rounds.md compares both models on the same fixed test photos.")]


def training_config(options: dict) -> TrainConfig:
    """A TrainConfig from command-line options (TrainConfig fields, `input_size` as typed, and
    `recipe`), checked by the library before any work; a --recipe fills in what the options
    leave at their defaults."""
    from ..training_recipe import apply_recipe, load_recipe

    fields = {k: v for k, v in options.items() if k not in ("recipe", "input_size")}
    config = TrainConfig(input_size=parse_size(options.get("input_size")), **fields)
    config.validate()
    if options.get("recipe") is not None:
        config = apply_recipe(config, load_recipe(options["recipe"]))
    return config


@training_options("backbone", "weights", "input_size", "resize", "epochs", "fine_tune_epochs", "feature_crops",
                  "head_c", "batch_size", "learning_rate", "dropout", "seed", "augment", "class_weights", "oversample",
                  "recipe")
def train(
    dataset: DatasetOrResume = None,
    out: Out = Path("runs/train"),
    feature_head: FeatureHead = DEFAULT.feature_head,
    fine_tune_learning_rate: FineTuneLearningRate = DEFAULT.fine_tune_learning_rate,
    label_smoothing: LabelSmoothing = DEFAULT.label_smoothing,
    weight_decay: WeightDecay = DEFAULT.weight_decay,
    lr_schedule: Schedule = DEFAULT.lr_schedule,
    refit_all: RefitAll = DEFAULT.refit_all,
    cv_folds: CvFolds = DEFAULT.cv_folds,
    previous: Previous = None,
    val_fraction: Fraction = DEFAULT.val_fraction,
    test_fraction: Fraction = DEFAULT.test_fraction,
    patience: Patience = DEFAULT.patience,
    flip: Flip = DEFAULT.flip,
    precision: Precision = DEFAULT.precision,
    deterministic: Deterministic = None,
    data_parallel: DataParallel = DEFAULT.data_parallel,
    resume: Resume = None,
    on_recorded_files: OnRecordedFiles = False,
    training: dict = None,
):
    """Train a classifier by transfer learning (two phases) and save model, labels, curves and metrics."""
    if resume is not None:
        from ..train import resume as resume_run

        _refuse_ignored_with_resume(resume, dataset)
        return _summary(resume_run(resume, console=err.get(), on_recorded_files=on_recorded_files))
    if on_recorded_files:
        raise OptionError("--on-recorded-files goes with --resume OUT (it says how to continue a run)")
    if dataset is None:
        raise OptionError("missing DATASET (an image-folder dataset), or --resume OUT to continue a run")
    # Every parameter but these is the TrainConfig field of the same name.
    own = {k: v for k, v in locals().items() if k not in ("dataset", "out", "resume", "on_recorded_files", "training")}
    config = training_config({**training, **own})
    folder_option("--out", out)
    from ..train import train as run_train

    _summary(run_train(dataset, out, config, console=err.get()))


def _refuse_ignored_with_resume(out: Path, dataset: Path | None) -> None:
    """A resumed run goes on with the dataset and options it began with: a dataset or option
    typed with --resume would be ignored, so it is an error that names them."""
    import click
    from click.core import ParameterSource

    from ..train.checkpoint import Checkpoint

    context = click.get_current_context()
    given = [param for param in context.command.params if param.name not in ("dataset", "resume", "on_recorded_files")
             and context.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    ignored = ["/".join(param.opts + param.secondary_opts) for param in given]
    if dataset is not None and Checkpoint(out).config_path.exists():
        recorded, _ = Checkpoint(out).run()
        if dataset.resolve() != recorded.resolve():
            ignored.insert(0, f"the dataset {dataset} (the run's is {recorded})")
    if ignored:
        raise OptionError(f"--resume {out} continues the run with the dataset and options it began with (recorded in "
                          f"{Checkpoint(out).config_path}); it would ignore {', '.join(ignored)}. Leave them out, or "
                          "start a new run without --resume")


def _summary(result) -> None:
    if not speaks():  # another process of a multi-process run: process 0 reports
        return
    val, tr = result.metrics["val"], result.metrics["train"]
    estimate = result.metrics.get("cv_estimate")
    if estimate:  # --refit-all: no photo was held out; say where the figure comes from
        lo, hi = estimate["ci95"]
        scored = (f"{estimate['folds']}-fold CV estimate {val['accuracy']:.4f} (95% {lo:.3f}-{hi:.3f}, "
                  f"{estimate['count']} photos, all of which trained the shipped model)")
    else:
        scored = f"validation {val['accuracy']:.4f}"
    show.print(f"model:      {result.model_path}", markup=False)
    show.print(f"accuracy:   {scored}, train {tr['accuracy']:.4f}, macro F1 {val['macro']['f1']:.4f}", markup=False)
    show.print(f"curves:     {result.out_dir / 'training_curves.png'}", markup=False)
    show.print(f"confusion:  {result.out_dir / 'confusion_matrix.png'}", markup=False)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")
    if result.metrics.get("rounds"):  # --previous: the round's report (also OUT/rounds.md)
        from ..train.rounds import markdown

        show.print(markdown(result.metrics["rounds"]), markup=False, highlight=False)
    from ..cv import small_split_note

    note = small_split_note(val["accuracy"], int(val["count"]))
    if note:
        err.print(f"note: {note}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    command(app, train)
