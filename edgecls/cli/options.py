"""Option declarations used by more than one command, each written once (help text included).

Their values are checked by the library the command calls (`edgecls.checks`), which names the
option in its error; `exits.message` spells it as the flag.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from ..preprocess import INTERPOLATIONS, RESIZE_MODES
from ..runtime import DECLARED_ACTIVATIONS
from ..train.config import TrainConfig

ACTIVATION_HELP = (f"The model's final activation ({' | '.join(DECLARED_ACTIVATIONS)}), for a model without a "
                   "manifest whose graph does not show it: softmax (outputs are probabilities, used as they are) "
                   "or none (logits; edgecls applies softmax).")

# --- running an artifact (predict, stream, evaluate, bench) ------------------------------------
Artifact = Annotated[Path, typer.Argument(help="A .tflite, .onnx or OpenVINO .xml model.")]
Images = Annotated[List[Path], typer.Argument(help="Image files.")]
Labels = Annotated[Optional[Path], typer.Option(help="Label file, for a model without a manifest.")]
Normalization = Annotated[Optional[str], typer.Option(
    help="tf | torch | caffe | unit | raw, for a float model without a manifest.")]
TopK = Annotated[int, typer.Option("--top-k", "-k", help="How many labels to print per image, best first.")]
Threads = Annotated[Optional[int], typer.Option(help="Engine threads (default: the target's where one is "
                                                     "given, else the engine's).")]
Activation = Annotated[Optional[str], typer.Option(help=ACTIVATION_HELP)]
Resize = Annotated[Optional[str], typer.Option(help=f"{' | '.join(RESIZE_MODES)} (default: the manifest's, else "
                                                    "stretch).")]
Interpolation = Annotated[Optional[str], typer.Option(help=(
    f"{' | '.join(INTERPOLATIONS)}: how pixels are resampled (default: the manifest's, else area, the anti-aliased "
    "box filter). For a model trained with another resize, e.g. linear for TF-slim or tf.image.resize bilinear "
    "(no anti-aliasing)."))]

# --- training (train, cv, tune) ------------------------------------------------------------------
Dataset = Annotated[Path, typer.Argument(help="Image-folder dataset: one sub-folder per class.")]
_DEFAULT = TrainConfig()
# Option name -> (declaration, default); a command takes the ones it names with `training_options`.
TRAINING = {
    "backbone": (Annotated[str, typer.Option(help="Backbone recipe (see `edgecls backbones`).")], _DEFAULT.backbone),
    "weights": (Annotated[Optional[str], typer.Option(
        help="imagenet | none | PATH to a .weights.h5 file (default: the recipe's).")], None),
    "input_size": (Annotated[Optional[str], typer.Option(help="N or HxW (default: the recipe's).")], None),
    "epochs": (Annotated[int, typer.Option(help="Phase 1 epochs (frozen backbone).")], _DEFAULT.epochs),
    "fine_tune_epochs": (Annotated[Optional[int], typer.Option(
        help="Phase 2 epochs (top layers unfrozen); 0 skips; default: 5 with at least 2000 training images, else "
             "none (small sets overfit).")], None),
    "batch_size": (Annotated[int, typer.Option()], _DEFAULT.batch_size),
    "learning_rate": (Annotated[float, typer.Option()], _DEFAULT.learning_rate),
    "dropout": (Annotated[float, typer.Option(
        help="Dropout before the dense head (gradient-trained heads and fine-tuning).")], _DEFAULT.dropout),
    "seed": (Annotated[int, typer.Option(help="Seeds the split (or the fold assignment) and the training.")],
             _DEFAULT.seed),
    "augment": (Annotated[bool, typer.Option(help="Flip/rotate/zoom/contrast augmentation while training.")],
                _DEFAULT.augment),
    "oversample": (Annotated[bool, typer.Option(help="Draw minority-class images again up to the largest class.")],
                   _DEFAULT.oversample),
    "class_weights": (Annotated[bool, typer.Option(help="Weight classes inversely to their frequency.")],
                      _DEFAULT.class_weights),
    "feature_crops": (Annotated[float, typer.Option(
        help="Feature head: also learn from the four corner crops of this fraction of each side (0: none; used when "
             "no fine-tuning follows).")], _DEFAULT.feature_crops),
    "head_c": (Annotated[Optional[float], typer.Option(
        help="Feature head's inverse L2 strength C (default: chosen by 3-fold CV on the training split).")], None),
    "resize": (Annotated[Optional[str], typer.Option(
        help=f"{' | '.join(RESIZE_MODES)}: how photos become the input square (default: the backbone recipe's; "
             "recorded in the manifest, so export, evaluation and the device use it too).")], None),
    "recipe": (Annotated[Optional[Path], typer.Option(
        help="Training recipe TOML (`edgecls tune` writes one); options given here win over it.")], None),
}


def training_options(*names: str) -> Callable[[Callable], Callable]:
    """Give a command the shared training options `names` (declared once, in TRAINING), after its
    first parameter (the dataset); the command receives their values as one dict, `training`."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn, eval_str=True)  # Typer reads a given signature as it is
        own = [p for p in signature.parameters.values() if p.name != "training"]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=TRAINING[name][0],
                                    default=TRAINING[name][1]) for name in names]
        keyword_own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[1:]]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            return fn(*args, training={name: kwargs.pop(name) for name in names}, **kwargs)

        command.__signature__ = signature.replace(parameters=[own[0], *shared, *keyword_own])
        return command

    return decorate
