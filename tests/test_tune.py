"""edgecls tune: an Optuna search whose trial 0 is the untuned config, and the recipe it saves."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.slow  # a minute: three trials of 3-fold CV
def test_tune_cli_small_budget(flowers, mobilenet_weights, tmp_path):
    out = tmp_path / "tune"
    proc = run_cli("tune", flowers, "--trials", "2", "--folds", "0", "--input-size", "96", "--epochs", "1",
                   "--fine-tune-epochs", "0", "--batch-size", "16", "--weights", mobilenet_weights, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "trials.json").read_text())
    trials = report["trials"]
    assert len(trials) == 2
    # Trial 0 is the untuned configuration, exactly, and holds only the settings that act on it:
    # the default head is a logistic regression, which no learning rate or dropout changes.
    assert trials[0]["params"] == {"feature_head": True, "augment": True, "feature_crops": 0.0, "head_c": None}
    assert trials[1]["params"] != trials[0]["params"]
    for t in trials:
        assert ("learning_rate" in t["params"]) == (not t["params"]["feature_head"])
    assert report["best"]["score"] == max(t["score"] for t in trials)
    assert "untuned" in proc.stdout and (out / "tune.png").stat().st_size > 5_000
    # Trials keep their metrics, not their models.
    assert (out / "trials" / "trial_000" / "metrics.json").is_file() and not list(out.rglob("*.keras"))

    from edgecls.training_recipe import load_recipe

    recipe = load_recipe(out / "best_recipe.toml")
    for name, value in report["best"]["params"].items():
        assert recipe.get(name) == (pytest.approx(value) if isinstance(value, float) else value), name
    assert recipe["input_size"] == (96, 96) and recipe["epochs"] == 1


def test_recipe_round_trip_and_precedence(tmp_path):
    from edgecls.train import TrainConfig
    from edgecls.training_recipe import apply_recipe, load_recipe, save_recipe

    tuned = TrainConfig(learning_rate=0.0042, dropout=0.35, input_size=(128, 128), augment=False, fine_tune_epochs=0)
    path = save_recipe(tuned, tmp_path / "r.toml", note="test")
    recipe = load_recipe(path)
    merged = apply_recipe(TrainConfig(), recipe)
    assert (merged.learning_rate, merged.dropout, merged.input_size, merged.augment) == (0.0042, 0.35, (128, 128), False)
    # An option given on the command line (differs from the default) wins over the recipe.
    assert apply_recipe(TrainConfig(dropout=0.1), recipe).dropout == 0.1


def test_every_searched_setting_is_a_train_config_field():
    """A dimension TrainConfig lacks would be sampled, trained with and silently ignored."""
    from edgecls.train import TrainConfig
    from edgecls.training_recipe import config_fields
    from edgecls.tune import ACTS_WHEN, SPACE, search_space

    fields = config_fields()
    assert {name for name, _, _ in SPACE} <= set(fields) and set(ACTS_WHEN) <= set(fields)
    space = search_space(TrainConfig(), sizes=[96, 128], backbones=["a", "b"], fine_tune=[0, 5])
    assert {name for name, _, _ in space} <= set(fields)


def test_recipe_errors(tmp_path):
    from edgecls.errors import OptionError
    from edgecls.training_recipe import load_recipe

    (tmp_path / "bad.toml").write_text("[train]\nlearning_rat = 0.1\n")
    with pytest.raises(OptionError, match="unknown settings learning_rat"):
        load_recipe(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("[train\n")
    with pytest.raises(OptionError, match="not valid TOML"):
        load_recipe(tmp_path / "broken.toml")
    with pytest.raises(OptionError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")


def test_confirmation_rescores_best_and_untuned_on_fresh_folds(flowers, tmp_path):
    """The best trial's score is the maximum of noisy scores; the confirmation scores both
    configurations again on folds drawn with another seed, and keeps no models."""
    import dataclasses

    from edgecls.train import TrainConfig
    from edgecls.tune import _confirm

    base = TrainConfig(backbone="simple_cnn", weights="none", input_size=(32, 32), epochs=1, fine_tune_epochs=0,
                       batch_size=16, seed=0)
    other = dataclasses.replace(base, epochs=2)
    out = _confirm(flowers, tmp_path, base, other, folds=2, seed=0, console=None)
    assert out["fold_seed"] == 1
    for key in ("baseline", "best"):
        assert 0.0 <= out[key]["score"] <= 1.0 and out[key]["std"] >= 0.0
        cv = json.loads((tmp_path / "confirm" / key / "cv.json").read_text())
        assert cv["config"]["seed"] == 1 and len(cv["folds_table"]) == 2
    assert out["gain"] == pytest.approx(out["best"]["score"] - out["baseline"]["score"])
    assert not list(tmp_path.rglob("*.keras"))
