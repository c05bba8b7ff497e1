"""Whether to fine-tune, decided from the data.

A fixed photo count cannot tell a set where fine-tuning the backbone's top gains points (photos
unlike ImageNet, often a thousand or two) from one where it overfits (a few hundred photos close
to ImageNet). So when `--fine-tune-epochs` is not given, the run measures it: the feature head is
fitted as always, then the top is fine-tuned from the head on activations computed once
(`top_tune`), and both are scored on the validation split, which neither trained on. The
fine-tuned model is kept only when its paired gain over the head exceeds the gain's standard
error; otherwise the head stays, weights restored. Both estimates, their intervals, the gain and
the decision are printed and recorded (metrics.json, the manifest).

The fine-tuning is a fixed schedule (epochs, a cosine-decayed learning rate): nothing is chosen
on the validation split, so its accuracy there is an honest estimate, and the comparison is
paired on the same photos.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..evaluate import paired_difference, wilson_interval
from ..keras_model import keras as _keras
from .config import DEFAULT_FINE_TUNE_EPOCHS, FINE_TUNE_MIN_IMAGES, TrainConfig
from .top_tune import (MEMORY_BUDGET_BYTES, Activations, CutModels, cut_models, on_batch, predict, trial_model,
                       tune_top)

RULE = "fine-tune when its paired gain over the feature head on the validation split exceeds one standard error"
COUNT_RULE = f"by training photo count: fine-tune from {FINE_TUNE_MIN_IMAGES} photos up"


def measured(config: TrainConfig, whole: bool, session) -> bool:
    """Whether this run decides from the data (the default) rather than being told."""
    several = session is not None and session.distributed
    return (config.fine_tune_epochs is None and not whole and not config.refit_all and config.feature_head
            and not several)


def prepare(net, fine_tune_from: str, views: int, train_count: int, val_count: int) -> tuple[CutModels | None, str]:
    """The backbone split for the trial, or None and why the data-driven decision cannot run here."""
    if not fine_tune_from:
        return None, "the recipe names no layer to fine-tune from"
    cut = cut_models(net, fine_tune_from)
    if cut is None:
        return None, f"the backbone's top reads tensors from below '{fine_tune_from}' (no single cut)"
    need = (views * train_count + val_count) * cut.bytes_per_picture()
    if need > MEMORY_BUDGET_BYTES:
        return None, (f"the activations of {train_count} training photos would take {need / 2**30:.1f} GiB "
                      f"(over {MEMORY_BUDGET_BYTES / 2**30:.0f} GiB)")
    return cut, ""


def activations(net, cut: CutModels, feeds: tuple, views: dict, console) -> Activations:
    """The frozen part's output for every training picture in each view and every validation
    picture as is, computed once (float16), with the training wrapper's normalisation."""
    from .feature_head import status
    from .feed import unwarped

    keras = _keras()
    normalize = net.wrapper.get_layer("normalize")
    train_feed, val_feed = feeds
    train_feed.epoch = 0
    started = time.perf_counter()

    def run(feed, view_functions):
        parts: list[list[np.ndarray]] = [[] for _ in view_functions]
        targets = []
        for i in range(len(feed)):
            x, y = feed[i]
            for out, view in zip(parts, view_functions):
                pixels = normalize(np.ascontiguousarray(view(x) if view is not None else x))
                out.append(on_batch(cut.bottom, keras.ops.convert_to_numpy(pixels), feed.plan.batch_size).astype(np.float16))
            targets.append(y)
        return [np.concatenate(p) for p in parts], np.concatenate(targets)

    with status(console, f"backbone below '{cut.cut}': {len(views)} view(s) of each photo, computed once"):
        train, targets = run(unwarped(train_feed), tuple(views.values()))
        (val,), val_targets = run(val_feed, (None,))
    return Activations(train, targets, val, val_targets, time.perf_counter() - started)


def features(cut: CutModels, acts: Activations) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """The head's input features (per training view, and of the validation photos) from the activations."""
    return [predict(cut.top, a) for a in acts.train], acts.targets, predict(cut.top, acts.val), acts.val_targets


def decide(net, cut: CutModels, acts: Activations, config: TrainConfig, class_weight: dict | None,
           console) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Fine-tune the top from the fitted head, compare on the validation split, keep the better
    by the rule; returns the decision record and the fine-tuning history (empty when the head stays)."""
    trial = trial_model(net, cut)
    head_val = predict(trial, acts.val)
    kept = net.inference.get_weights()
    epochs = DEFAULT_FINE_TUNE_EPOCHS
    history = tune_top(net, cut, acts, epochs, config.fine_tune_learning_rate, config, class_weight, console)
    tuned_val = predict(trial, acts.val)
    truth = acts.val_targets
    record = choose(head_val.argmax(1) == truth, tuned_val.argmax(1) == truth)
    fine_tune = record["decision"] == "fine-tune"
    if not fine_tune:
        net.inference.set_weights(kept)
        net.backbone.trainable = False
    record["fine_tuned"].update({"epochs": epochs, "learning_rate": config.fine_tune_learning_rate,
                                 "method": f"top from '{cut.cut}' on activations computed once ({len(acts.train)} "
                                           "view(s)), cosine-decayed learning rate, batch norm frozen"})
    record["seconds"] = {"activations": round(acts.seconds, 1), "fine_tuning": round(getattr(net, "trial_seconds", 0.0), 1)}
    console.print(describe(record))
    return record, history if fine_tune else {}


def choose(head_right: np.ndarray, tuned_right: np.ndarray) -> dict[str, Any]:
    """The rule on the same validation photos, each right or wrong for the head and for the
    fine-tuned model: fine-tune when the paired gain exceeds its standard error (Agresti-Min,
    which stays sound with few discordant photos); the record of both estimates and the gain."""
    gain = paired_difference(tuned_right, head_right)
    se = (gain["high"] - gain["low"]) / (2 * 1.96)
    fine_tune = gain["difference"] > 0 and gain["difference"] > se
    n = int(len(head_right))
    return {
        "decision": "fine-tune" if fine_tune else "feature head", "rule": RULE, "validation_count": n,
        "feature_head": {"accuracy": float(np.mean(head_right)), "ci95": list(wilson_interval(int(np.sum(head_right)), n))},
        "fine_tuned": {"accuracy": float(np.mean(tuned_right)), "ci95": list(wilson_interval(int(np.sum(tuned_right)), n))},
        "gain": float(gain["difference"]), "gain_se": float(se), "gain_ci95": [float(gain["low"]), float(gain["high"])],
        "only_fine_tuned_right": gain["a_only"], "only_head_right": gain["b_only"], "p_value": float(gain["p_value"]),
    }


def by_count(config: TrainConfig, train_count: int, reason: str) -> dict[str, Any]:
    """The record of a run that could not measure: today's photo-count rule, and why."""
    epochs = DEFAULT_FINE_TUNE_EPOCHS if train_count >= FINE_TUNE_MIN_IMAGES else 0
    return {"decision": "fine-tune" if epochs else "feature head", "rule": COUNT_RULE, "reason": reason,
            "training_count": train_count}


def given(config: TrainConfig) -> dict[str, Any] | None:
    """The record of a run told what to do (`--fine-tune-epochs N`, or --refit-all, which has no
    validation split to fine-tune on); None where nothing was told."""
    if config.refit_all:
        return {"decision": "feature head", "rule": "--refit-all fits the feature head on every photo"}
    if config.fine_tune_epochs is None:
        return None
    return {"decision": "fine-tune" if config.fine_tune_epochs else "feature head",
            "rule": f"given: --fine-tune-epochs {config.fine_tune_epochs}"}


def needs_phase_two(record: dict[str, Any]) -> bool:
    """Whether phase 2 (fine-tuning on pictures) still has to run after this decision: where it
    says fine-tune and was not measured (told, or the count rule); a measured decision already
    fine-tuned, or kept the head."""
    return record["decision"] == "fine-tune" and record["rule"] != RULE


def describe(record: dict[str, Any]) -> str:
    """One line for the console: both estimates with their intervals, the gain and the decision."""
    if record["rule"] != RULE:
        why = f"; {record['reason']}" if record.get("reason") else ""
        return f"fine-tuning: {record['decision']} ({record['rule']}{why})"
    head, tuned = record["feature_head"], record["fine_tuned"]
    return (f"fine-tuning decision on {record['validation_count']} validation photos: feature head "
            f"{head['accuracy']:.3f} [{head['ci95'][0]:.3f}-{head['ci95'][1]:.3f}], fine-tuned {tuned['accuracy']:.3f} "
            f"[{tuned['ci95'][0]:.3f}-{tuned['ci95'][1]:.3f}]; gain {record['gain'] * 100:+.1f} pt "
            f"(SE {record['gain_se'] * 100:.1f}) -> {record['decision']}")
