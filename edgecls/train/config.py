"""What a training run is asked to do (`TrainConfig`, checked before any work) and what it returns."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import checks
from ..errors import OptionError
from ..models import Recipe, get_recipe, resolve_weights
from ..preprocess import RESIZE_MODES

# --precision values -> Keras dtype policies. `auto` is resolved per phase by `device.phase_policy`.
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
PRECISION_CHOICES = ("auto", *PRECISIONS)
LR_SCHEDULES = ("constant", "cosine")

# Below this many training images the default skips fine-tuning: on flowers-small (160 training
# images) gradient-trained heads scored below the frozen linear probe by 5-fold CV over three fold
# seeds (0.845-0.848 vs 0.857; the feature head with crop views 0.868:
# bench/results/feature_head_cv_224px.md), and issue 10 reports the same on a 244-photo 2-class
# set (held-out 0.915 vs 0.967).
FINE_TUNE_MIN_IMAGES = 2000
DEFAULT_FINE_TUNE_EPOCHS = 5


# TrainConfig's field annotations -> (type, None allowed), for the type checks of `validate`.
_FIELD_KINDS = {"int": (int, False), "int | None": (int, True), "float": (float, False), "float | None": (float, True),
                "bool": (bool, False), "bool | None": (bool, True), "str": (str, False), "str | None": (str, True),
                "tuple[int, int] | None": (tuple, True), "list[int] | None": (list, True)}


@dataclass
class TrainConfig:
    backbone: str = "mobilenet_v2"
    weights: str | None = None          # imagenet | none | PATH; default: the recipe's
    input_size: tuple[int, int] | None = None
    epochs: int = 10                    # phase 1 (head) epochs
    fine_tune_epochs: int | None = None  # phase 2 epochs; 0 skips; None: by data size (FINE_TUNE_MIN_IMAGES)
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    dropout: float = 0.2
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    patience: int = 3                   # early stopping on validation loss
    class_weights: bool = False
    augment: bool = True
    flip: bool = True                   # horizontal flips (wrong for digits and text)
    precision: str = "auto"             # auto | fp32 | bf16 | fp16 (the saved model is float32 either way)
    deterministic: bool | None = None   # None: on for CPU training, off on an accelerator
    data_parallel: bool = False         # keras.distribution.DataParallel over all local devices (JAX)
    workers: int = 0                    # processes decoding the cache; 0: all cores
    cache_dir: str | None = None        # default: edgecls.cache.cache_root()
    fold: list[int] | None = None       # [k, i]: validate on fold i of a stratified k-fold split (edgecls cv)
    oversample: bool = False            # draw minority-class training images again, up to the largest class
    feature_head: bool = True           # phase 1: logistic regression on backbone features computed once
    # feature head: also learn from 4 corner crops of this side fraction; 0 (default): as is + mirrored only.
    # Held out (bench/results/resize_default_vs_probe.md): crops cost 3.5 points on clothing (372 photos,
    # p=0.04) and 2 photos on hymenoptera val; by CV they were neutral on flowers and hymenoptera.
    feature_crops: float = 0.0
    head_c: float | None = None         # feature head's inverse L2 strength; None: chosen by inner CV
    resize: str | None = None           # preprocess.RESIZE_MODES; None: the backbone recipe's
    refit_all: bool = False             # fit on every photo (no validation hold-back); estimate by CV
    previous: str | None = None         # the previous round's run or model: its split carried by file (train.rounds)
    cv_folds: int = 5                   # folds of refit_all's estimate
    # Gradient-trained phases (a --gradient-head, fine-tuning):
    label_smoothing: float = 0.0        # cross-entropy against (1 - e) * one-hot + e / classes
    weight_decay: float = 0.0           # > 0: AdamW with this decoupled weight decay instead of Adam
    lr_schedule: str = "constant"       # constant | cosine (one warm-up epoch, then cosine decay to 0)

    def validate(self) -> Recipe:
        """Check every setting before any work (OptionError names the first one at fault, by its
        field name); returns the backbone's recipe."""
        self._check_types()
        recipe = get_recipe(self.backbone)
        checks.at_least("epochs", self.epochs, 1)
        checks.at_least("fine_tune_epochs", self.fine_tune_epochs, 0)
        checks.at_least("batch_size", self.batch_size, 1)
        checks.within("learning_rate", self.learning_rate, 0, 10, low_open=True)
        checks.within("fine_tune_learning_rate", self.fine_tune_learning_rate, 0, 10, low_open=True)
        checks.within("dropout", self.dropout, 0, 1, high_open=True)
        checks.within("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        checks.within("weight_decay", self.weight_decay, 0, 1, high_open=True)
        checks.one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        checks.within("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        checks.within("test_fraction", self.test_fraction, 0, 1, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise OptionError(f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction} leave no "
                              "training images", "val_fraction", "test_fraction")
        checks.at_least("seed", self.seed, 0)
        checks.at_least("patience", self.patience, 0)
        checks.one_of("precision", self.precision, PRECISION_CHOICES)
        checks.at_least("workers", self.workers, 0)
        if self.input_size is not None and (len(self.input_size) != 2 or not all(1 <= s <= 4096 for s in self.input_size)):
            raise OptionError(f"input_size must be (height, width) with sizes from 1 to 4096, got {self.input_size}",
                              "input_size")
        if self.feature_crops and not 0.5 <= self.feature_crops < 1:
            raise OptionError(f"feature_crops must be 0 (no crops) or in [0.5, 1), got {self.feature_crops}",
                              "feature_crops")
        if self.head_c is not None and not 0 < self.head_c <= 1e6:
            raise OptionError(f"head_c must be positive (at most 1e6), got {self.head_c}", "head_c")
        checks.one_of("resize", self.resize, RESIZE_MODES)
        self._check_refit_all(recipe, resolve_weights(self.weights or recipe.weights))
        if self.previous is not None and (self.refit_all or self.fold):
            raise OptionError("previous (a new round) keeps the previous round's held-out photos held out; it cannot "
                              "go with refit_all or a cross-validation fold", "previous")
        return recipe

    def _check_types(self) -> None:
        """Each field holds what its option takes (a recipe file or a library caller can put text
        or a list where a number goes; the command line parses them before they get here)."""
        for f in fields(self):
            kind, optional = _FIELD_KINDS[f.type]
            value = getattr(self, f.name)
            if kind in (tuple, list):  # input_size (height, width), fold [k, i]: two whole numbers
                if not (optional and value is None) and not (isinstance(value, (tuple, list)) and len(value) == 2):
                    raise OptionError(f"{f.name} must be two whole numbers, got {value!r}", f.name)
                for item in value or ():
                    checks.of_type(f.name, item, int)
            else:
                checks.of_type(f.name, value, kind, optional)

    def _check_refit_all(self, recipe: Recipe, weights: str | None) -> None:
        """--refit-all's estimate is k-fold CV of the feature head on features computed once, so
        it needs that head, on a frozen pretrained backbone, with no gradient phase after it."""
        checks.at_least("cv_folds", self.cv_folds, 2)
        if not self.refit_all:
            return
        if weights is None or not recipe.application:  # network.trains_whole: no frozen features
            raise OptionError(f"refit_all needs a pretrained backbone kept frozen (its CV estimate reuses features "
                              f"computed once); {recipe.name} without pretrained weights trains whole", "refit_all")
        if not self.feature_head:
            raise OptionError("refit_all needs the feature head (its CV estimate reuses features computed once); "
                              "use `edgecls cv` to estimate a gradient-trained head", "refit_all")
        if self.fine_tune_epochs:
            raise OptionError("refit_all cannot fine-tune (fine-tuning early-stops on the validation split it "
                              "removes); use --fine-tune-epochs 0, or train with a validation split",
                              "refit_all", "fine_tune_epochs")
        if self.fold:
            raise OptionError("refit_all and fold exclude each other (a fold holds photos back)", "refit_all")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config recorded in a checkpoint or manifest (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if kwargs.get("input_size") is not None:
            kwargs["input_size"] = tuple(kwargs["input_size"])
        return cls(**kwargs)


@dataclass
class TrainResult:
    model_path: Path
    out_dir: Path
    labels: list[str]
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def planned_fine_tune_epochs(config: TrainConfig, train_count: int, whole: bool = False) -> int:
    """The configured fine-tuning epochs, or by data size when not configured (none for a
    network trained whole from the start, or refitted on every photo)."""
    if config.fine_tune_epochs is not None:
        return config.fine_tune_epochs
    if whole or config.refit_all:
        return 0
    return DEFAULT_FINE_TUNE_EPOCHS if train_count >= FINE_TUNE_MIN_IMAGES else 0
