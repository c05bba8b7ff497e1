"""`edgecls tune`: hyperparameter search (Optuna) around a training recipe."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import OptionError
from .common import comma_list, command, err, escape, show
from .options import Dataset, training_options
from .train import training_config


def _ints(option: str, value: Optional[str]) -> list[int]:
    try:
        return [int(s) for s in comma_list(option, value)]
    except ValueError:
        raise OptionError(f"{option} {value!r}: expected a comma list of whole numbers, such as 96,128") from None


def _trial_line(r: dict) -> str:
    how = f"(same settings as trial {r['repeat_of']}, not retrained) " if "repeat_of" in r else f"({r['seconds']:.0f} s) "
    return f"trial {r['trial']}: score {r['score']:.4f} " + how + json.dumps(r["params"])


@training_options("backbone", "weights", "input_size", "epochs", "fine_tune_epochs", "batch_size", "seed", "recipe")
def tune_command(
    dataset: Dataset,
    out: Annotated[Path, typer.Option(help="Output folder: trials.md/json, tune.png, best_recipe.toml.")]
    = Path("runs/tune"),
    trials: Annotated[int, typer.Option(help="Budget: number of trials (trial 0 is the untuned configuration).")] = 10,
    timeout: Annotated[Optional[float], typer.Option(help="Budget: stop starting trials after this many seconds.")]
    = None,
    folds: Annotated[int, typer.Option(help="Score by this many CV folds; 0 scores on the validation split "
                                       "(faster, noisier).")] = 3,
    sizes: Annotated[Optional[str], typer.Option(help="Input sizes to search, such as 96,128,160.")] = None,
    backbones: Annotated[Optional[str], typer.Option(help="Backbones to search, such as "
                                                     "mobilenet_v2,efficientnet_b0.")] = None,
    fine_tune: Annotated[Optional[str], typer.Option(help="Fine-tuning epochs to search, such as 0,5 (0: frozen "
                                                     "backbone).")] = None,
    confirm: Annotated[bool, typer.Option("--confirm/--no-confirm", help="Score the best and the untuned "
                                          "configuration again on fresh folds (the best of many noisy trials is "
                                          "biased upwards).")] = True,
    training: dict = None,
):
    """Search the head (crops, regularisation), learning rates, dropout, augmentation (and sizes, backbones,
    fine-tuning) with Optuna; save the best recipe."""
    from ..tune import check_budget, search_space, tune as run_tune

    check_budget(trials, timeout, folds)
    size_list, tune_list = _ints("--sizes", sizes), _ints("--fine-tune", fine_tune)
    base = training_config(training)
    space = search_space(base, size_list, comma_list("--backbones", backbones), tune_list)
    result = run_tune(dataset, out, base, trials, timeout, folds, space, training["seed"], console=err.get(),
                      on_trial=lambda r: err.print(_trial_line(r), highlight=False, markup=False), confirm=confirm)
    show.print(Path(result.paths["md"]).read_text(), markup=False)
    show.print(f"untuned {result.baseline['score']:.4f} -> best {result.best['score']:.4f} "
               f"({100 * result.improvement:+.1f} points)", highlight=False)
    c = result.confirmation
    if c:
        show.print(f"fresh folds (seed {c['fold_seed']}): untuned {c['baseline']['score']:.4f} -> best "
                   f"{c['best']['score']:.4f} ({100 * c['gain']:+.1f} points)", highlight=False)
    show.print(f"recipe: {escape(result.paths['recipe'])}  (edgecls train DATASET --recipe ...)\n"
               f"plot:   {escape(result.paths['png'])}", highlight=False)


def register(app: typer.Typer) -> None:
    command(app, tune_command, "tune")
