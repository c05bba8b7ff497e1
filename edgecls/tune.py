"""Hyperparameter search with Optuna over `edgecls.train` settings, scored by cross-validation
or by the validation split, within a budget of trials or seconds.

Optuna rather than KerasTuner: edgecls trains through its own `train()` (two phases, caches,
checkpoints), so the search needs a black-box "config in, score out" optimiser, which is
Optuna's model; KerasTuner wants to own the model-building function and the fit loop. Optuna's
TPE sampler also handles the conditional, mixed space (log-scaled rates, booleans, sizes)
and stops on a time budget. The untuned configuration is always trial 0, so the best result
is compared with it in the same run, on the same folds.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import checks
from .errors import OptionError
from .files import atomic_write_text
from .training_recipe import save_recipe

# (TrainConfig field, kind, arguments): every name is a TrainConfig field (a test checks it).
# Order matters: a dimension is sampled only where it acts (`ACTS_WHEN`), judged on the config
# sampled so far, so no trial is spent on a learning rate that a logistic-regression head ignores.
SPACE: list[tuple[str, str, tuple]] = [
    ("feature_head", "categorical", ((True, False),)),
    ("augment", "categorical", ((True, False),)),
    ("feature_crops", "categorical", ((0.0, 0.6, 0.7, 0.8, 0.9),)),
    ("head_c", "categorical", ((None, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),)),  # None: inner CV chooses
    ("learning_rate", "log", (1e-4, 1e-2)),
    ("dropout", "float", (0.0, 0.5)),
    ("weight_decay", "categorical", ((0.0, 1e-5, 1e-4, 1e-3, 1e-2),)),  # 0: Adam (a log range excludes it)
    ("lr_schedule", "categorical", (("constant", "cosine"),)),
    ("label_smoothing", "float", (0.0, 0.2)),
    ("fine_tune_learning_rate", "log", (1e-5, 1e-3)),
]

# When a dimension changes training: f(config, fine_tunes) where fine_tunes says whether a
# fine-tuning phase runs. Dimensions not named here always act.
ACTS_WHEN: dict[str, Callable[[Any, bool], bool]] = {
    "feature_crops": lambda c, ft: c.feature_head and c.augment and not ft,
    "head_c": lambda c, ft: c.feature_head,
    "learning_rate": lambda c, ft: not c.feature_head,
    "dropout": lambda c, ft: ft or not c.feature_head,
    "weight_decay": lambda c, ft: ft or not c.feature_head,
    "label_smoothing": lambda c, ft: ft or not c.feature_head,
    "lr_schedule": lambda c, ft: ft or not c.feature_head,
    "fine_tune_learning_rate": lambda c, ft: ft,
}


def _missing_optuna():
    from .errors import missing_extra

    return missing_extra("optuna", "train")


@dataclass
class TuneResult:
    trials: list[dict[str, Any]]
    best: dict[str, Any]
    baseline: dict[str, Any]
    recipe_path: Path
    paths: dict[str, str] = field(default_factory=dict)
    confirmation: dict[str, Any] | None = None   # best vs untuned on fresh folds (tune's `confirm`)

    @property
    def improvement(self) -> float:
        return self.best["score"] - self.baseline["score"]


def search_space(base, sizes: Sequence[int] = (), backbones: Sequence[str] = (),
                 fine_tune: Sequence[int] = ()) -> list[tuple[str, str, tuple]]:
    """The dimensions searched for `base` (a TrainConfig): those of SPACE it has, plus input
    sizes, backbones and fine-tuning epochs (0: frozen backbone) when more than one is given."""
    for size in sizes:
        checks.within("sizes", size, 32, 1024)
    space = []  # these first: which other dimensions act depends on them
    if len(set(sizes)) > 1:
        space.append(("input_size", "categorical", (tuple(sorted(set(int(s) for s in sizes))),)))
    if len(set(backbones)) > 1:
        space.append(("backbone", "categorical", (tuple(sorted(set(backbones))),)))
    if len(set(fine_tune)) > 1:
        space.append(("fine_tune_epochs", "categorical", (tuple(sorted(set(int(e) for e in fine_tune))),)))
    return space + list(SPACE)


def fine_tunes(config, train_count: int) -> bool:
    """Whether `config` runs a fine-tuning phase on a training split of `train_count` images."""
    from .train import planned_fine_tune_epochs

    return planned_fine_tune_epochs(config, train_count) > 0


def _acts(name: str, config, train_count: int) -> bool:
    when = ACTS_WHEN.get(name)
    return when is None or when(config, fine_tunes(config, train_count))


def active_values(base, space, train_count: int) -> dict[str, Any]:
    """The untuned configuration's values of the dimensions that act on it (trial 0)."""
    out = {}
    for name, _, _ in space:
        if _acts(name, base, train_count):
            out[name] = _plain_value(getattr(base, name))
    return out


def _sample(trial, space, base=None, train_count: int = 0) -> dict[str, Any]:
    out = {}
    for name, kind, args in space:
        if base is not None and not _acts(name, dataclasses.replace(base, **_from_plain(out)), train_count):
            continue
        if kind == "log":
            out[name] = trial.suggest_float(name, *args, log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, *args)
        else:
            out[name] = trial.suggest_categorical(name, list(args[0]))
    return _from_plain(out)


def check_budget(trials: int, timeout: float | None, folds: int) -> None:
    """A search's budget and scoring, checked before any work."""
    checks.at_least("trials", trials, 1)
    checks.positive("timeout", timeout, "number of seconds")
    if folds == 1 or folds < 0:
        raise OptionError(f"folds must be 0 (score on the validation split) or at least 2, got {folds}", "folds")


class _Objective:
    """Optuna's objective: sample a trial's settings, score them (CV or the validation split),
    keep a row per trial; a point TPE proposes again reuses its score (training is deterministic)."""

    def __init__(self, dataset, out_dir: Path, base, folds: int, space: list, train_count: int, console,
                 on_trial: Callable[[dict], None] | None):
        self.dataset, self.out_dir, self.base, self.folds = dataset, out_dir, base, folds
        self.space, self.train_count, self.console, self.on_trial = space, train_count, console, on_trial
        self.rows: list[dict[str, Any]] = []
        self.scored: dict[str, dict[str, Any]] = {}

    def __call__(self, trial) -> float:
        params = _sample(trial, self.space, self.base, self.train_count)
        key = json.dumps(_plain(params), sort_keys=True, default=str)
        if key in self.scored:
            row = {**self.scored[key], "trial": trial.number, "seconds": 0.0, "repeat_of": self.scored[key]["trial"]}
        else:
            started = time.perf_counter()
            score, std, f1 = self._score(dataclasses.replace(self.base, **params), trial.number)
            row = {"trial": trial.number, "score": float(score), "std": float(std), "macro_f1": float(f1),
                   "seconds": round(time.perf_counter() - started, 1), "params": _plain(params)}
            self.scored[key] = row
        self.rows.append(row)
        if self.on_trial:
            self.on_trial(row)
        return row["score"]

    def _score(self, config, number: int) -> tuple[float, float, float]:
        """(accuracy, its std over folds, macro F1) of one configuration."""
        from .cv import cross_validate
        from .train import train

        config.validate()
        where = self.out_dir / "trials" / f"trial_{number:03d}"
        if self.folds:
            cv = cross_validate(self.dataset, where, config, self.folds, console=self.console, name=f"trial {number}")
            scores = cv.summary["accuracy"]["mean"], cv.summary["accuracy"]["std"], cv.summary["macro_f1"]["mean"]
        else:
            val = train(self.dataset, where, config, console=self.console).metrics["val"]
            scores = val["accuracy"], 0.0, val["macro"]["f1"]
        _drop_models(where)
        return scores


def tune(dataset: str | Path, out_dir: str | Path, base, trials: int = 10, timeout: float | None = None,
         folds: int = 3, space: list | None = None, seed: int = 0, console=None,
         on_trial: Callable[[dict], None] | None = None, confirm: bool = True) -> TuneResult:
    """Search `space` around `base` (a TrainConfig). Score: mean CV accuracy over `folds` folds, or
    the validation accuracy of one split when `folds` is 0. With `confirm` (and folds), the best
    and the untuned configuration are scored again on fresh folds (another fold seed): the best of
    many noisy trials is biased upwards, and the fresh folds say whether its gain holds. Writes
    trials.json/md, tune.png and best_recipe.toml (for `edgecls train --recipe`)."""
    check_budget(trials, timeout, folds)
    base.validate()
    try:
        import optuna
    except ImportError:
        raise _missing_optuna() from None
    from . import data as data_mod

    count = len(data_mod.scan(dataset))
    train_count = int(count * (1 - 1 / folds)) if folds else int(count * (1 - base.val_fraction - base.test_fraction))
    space = _including(base, search_space(base) if space is None else space)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = _Objective(dataset, out_dir, base, folds, space, train_count, console, on_trial)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE samples at random for its first n_startup_trials (10 by default): with a budget of a dozen
    # trials it would never model the results, so a third of the budget explores (2 to 10 trials).
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    # Trial 0 is the untuned configuration: the baseline, scored on the same folds.
    study.enqueue_trial({name: value for name, value in active_values(base, space, train_count).items()
                         if _in_space(value, name, space)}, skip_if_exists=True)
    study.optimize(objective, n_trials=trials, timeout=timeout, gc_after_trial=True)
    result = _result(objective.rows, base, out_dir, folds)
    if confirm and folds and result.best is not result.baseline:
        best_config = dataclasses.replace(base, **_from_plain(result.best["params"]))
        result.confirmation = _confirm(dataset, out_dir, base, best_config, folds, seed, console)
    _write(result, dataset, out_dir, folds, space)
    return result


def _result(rows: list[dict[str, Any]], base, out_dir: Path, folds: int) -> TuneResult:
    """The baseline (trial 0) and the best trial, its recipe saved."""
    baseline = rows[0]
    best = max(rows, key=lambda r: (r["score"], -r["trial"]))
    recipe_path = save_recipe(dataclasses.replace(base, **_from_plain(best["params"])), out_dir / "best_recipe.toml",
                              note=f"edgecls tune: best of {len(rows)} trials, "
                                   f"{'%d-fold CV' % folds if folds else 'validation'} accuracy {best['score']:.4f} "
                                   f"(untuned {baseline['score']:.4f})")
    return TuneResult(rows, best, baseline, recipe_path)


def _write(result: TuneResult, dataset, out_dir: Path, folds: int, space: list) -> None:
    """trials.json, trials.md and tune.png."""
    payload = {"dataset": str(dataset), "folds": folds, "space": [list(map(str, d[:2])) for d in space],
               "trials": result.trials, "best": result.best, "baseline": result.baseline,
               "confirmation": result.confirmation}
    atomic_write_text(out_dir / "trials.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out_dir / "trials.md", trials_table(result, folds))
    result.paths = {"json": str(out_dir / "trials.json"), "md": str(out_dir / "trials.md"),
                    "png": str(plot_trials(result, out_dir / "tune.png", folds)), "recipe": str(result.recipe_path)}


def _confirm(dataset, out_dir: Path, base, best_config, folds: int, seed: int, console) -> dict[str, Any]:
    """The untuned and the best configuration on folds drawn with another seed."""
    from .cv import cross_validate

    fresh = seed + 1
    out: dict[str, Any] = {"fold_seed": fresh}
    for key, config in (("baseline", base), ("best", best_config)):
        where = out_dir / "confirm" / key
        cv = cross_validate(dataset, where, dataclasses.replace(config, seed=fresh), folds, console=console,
                            name=f"confirm {key}")
        _drop_models(where)
        out[key] = {"score": cv.summary["accuracy"]["mean"], "std": cv.summary["accuracy"]["std"]}
    out["gain"] = out["best"]["score"] - out["baseline"]["score"]
    return out


def _drop_models(where: Path) -> None:
    """Keep a trial's tables, plots and metrics; its models (~10 MB per fold) are retrained from the recipe."""
    for model in where.rglob("*.keras"):
        model.unlink(missing_ok=True)
        Path(str(model) + ".json").unlink(missing_ok=True)
    for checkpoint in where.rglob("checkpoint"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint, ignore_errors=True)


def _including(base, space: list) -> list:
    """The space widened to contain the untuned values, so trial 0 is exactly the baseline."""
    out = []
    for name, kind, args in space:
        value = _plain_value(getattr(base, name))
        if kind in ("log", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
            args = (min(args[0], value), max(args[1], value)) if (kind == "float" or value > 0) else args
        elif kind == "categorical" and value not in [_plain_value(v) for v in args[0]]:
            args = (tuple(args[0]) + (value,),)
        out.append((name, kind, args))
    return out


def _in_space(value, name, space) -> bool:
    for n, kind, args in space:
        if n == name:
            if kind in ("log", "float"):
                return args[0] <= value <= args[1]
            return _plain_value(value) in [_plain_value(v) for v in args[0]]
    return False


def _plain_value(v):
    if isinstance(v, (tuple, list)):
        return int(v[0]) if len(v) == 2 and v[0] == v[1] else list(v)
    return v


def _plain(params: dict) -> dict:
    return {k: _plain_value(v) for k, v in params.items()}


def _from_plain(params: dict) -> dict:
    out = dict(params)
    if isinstance(out.get("input_size"), int):
        out["input_size"] = (out["input_size"], out["input_size"])
    return out


def trials_table(result: TuneResult, folds: int) -> str:
    score = f"{folds}-fold CV accuracy" if folds else "validation accuracy"
    names = sorted({k for r in result.trials for k in r["params"]})
    lines = [f"# edgecls tune: {len(result.trials)} trials, score = {score}", "",
             "A blank cell: the setting has no effect in that trial (a learning rate for a logistic-regression "
             "head, say) and was not sampled; auto: chosen during training (head_c by inner CV).", "",
             "| trial | score | ± std | macro F1 | s | " + " | ".join(names) + " |",
             "| ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(names)]
    for r in result.trials:
        mark = " (untuned)" if r is result.baseline else (" (best)" if r is result.best else "")
        mark += f" = trial {r['repeat_of']}" if "repeat_of" in r else ""
        values = [_fmt(r["params"][n]) if n in r["params"] else "" for n in names]  # blank: has no effect here
        lines.append(f"| {r['trial']}{mark} | {r['score']:.4f} | {r['std']:.4f} | {r['macro_f1']:.4f} | "
                     f"{r['seconds']:.0f} | " + " | ".join(values) + " |")
    lines += ["", f"best {result.best['score']:.4f} vs untuned {result.baseline['score']:.4f} "
                  f"({100 * result.improvement:+.1f} points); recipe: {result.recipe_path}"]
    c = result.confirmation
    if c:
        lines += ["", f"on fresh folds (fold seed {c['fold_seed']}): best {c['best']['score']:.4f} ± "
                      f"{c['best']['std']:.4f} vs untuned {c['baseline']['score']:.4f} ± {c['baseline']['std']:.4f} "
                      f"({100 * c['gain']:+.1f} points)"]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "auto" if v is None else str(v)


def plot_trials(result: TuneResult, path: str | Path, folds: int) -> Path:
    """Score per trial with the best so far, the untuned baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = [r["trial"] for r in result.trials]
    y = np.asarray([r["score"] for r in result.trials])
    err = [r["std"] for r in result.trials]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(x) + 3), 3.6))
    ax.errorbar(x, y, yerr=err if folds else None, fmt="o", label="trial")
    ax.plot(x, np.maximum.accumulate(y), "-", label="best so far")
    ax.axhline(result.baseline["score"], color="gray", linestyle="--", label="untuned (trial 0)")
    ax.set_xlabel("trial")
    ax.set_xticks(x)
    ax.set_ylabel(f"{folds}-fold CV accuracy" if folds else "validation accuracy")
    ax.set_title("edgecls tune")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
