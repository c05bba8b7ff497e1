"""The phases of a run in order: phase 1 trains a head over the frozen backbone (a logistic
regression on features computed once by default, or by gradient descent), phase 2 fine-tunes
the backbone's top layers from the recipe's `fine_tune_from` at a lower learning rate."""
from __future__ import annotations

import contextlib

from . import decide
from .checkpoint import Checkpoint
from .config import FINE_TUNE_MIN_IMAGES, TrainConfig, planned_fine_tune_epochs
from .device import outside_distribution
from .feature_head import fit_feature_head
from .gradient import fit_phase


def fine_tune_epochs(config: TrainConfig, train_count: int, whole: bool, console) -> int:
    """`planned_fine_tune_epochs`, saying so when the data size ruled fine-tuning out."""
    epochs = planned_fine_tune_epochs(config, train_count, whole)
    if config.fine_tune_epochs is None and config.refit_all:
        console.print("no fine-tuning phase: --refit-all fits the feature head alone (fine-tuning would need the "
                      "validation split it removes)")
    elif config.fine_tune_epochs is None and not whole and not epochs:
        console.print(f"no fine-tuning phase: {train_count} training images (fewer than {FINE_TUNE_MIN_IMAGES}), "
                      "where fine-tuning overfits; --fine-tune-epochs N asks for it")
    return epochs


def fit_phases(build, phases, policies: dict, feeds: tuple, config: TrainConfig, checkpoint: Checkpoint,
               resumed: dict | None, class_weight: dict | None, console, fine_tune_from: str, whole: bool,
               session=None):
    """Run the phases in order (from the resumed one), each on a net built under its dtype policy
    and starting from the previous phase's weights; returns (net, history, phase boundary).
    `whole`: the backbone trains from the start (no feature head); `session`: the processes of
    a multi-process run (`edgecls.distributed`)."""
    several = session is not None and session.distributed
    start_phase = resumed["phase"] if resumed else 1
    history: dict[str, list[float]] = {k: list(v) for k, v in (resumed or {}).get("earlier_history", {}).items()}
    phase_boundary = (resumed or {}).get("phase_boundary", 0)
    net, decision, tuned = None, (resumed or {}).get("fine_tune_decision"), {}
    for phase, epochs, lr in phases:
        if phase < start_phase or (phase == 2 and decision is not None and not decide.needs_phase_two(decision)):
            continue
        this = resumed if resumed and resumed["phase"] == phase else None
        feature_head = phase == 1 and config.feature_head and this is None and not whole
        # Several processes: the feature head's backbone runs on each process's own devices over
        # its share of the batches (Keras predicts only on one process's devices).
        with outside_distribution() if several and feature_head else contextlib.nullcontext():
            previous, net = net, build(policies[phase], phase == 2)
        if previous is not None:
            net.wrapper.set_weights(previous.wrapper.get_weights())
        if phase == 2:
            console.print(f"phase 2: fine-tuning the backbone from '{fine_tune_from}'")
        # Written into every checkpoint of the phase, so a resume knows what came before.
        extra = checkpoint.with_fields({"earlier_history": history, "phase_boundary": phase_boundary})
        if feature_head:
            phase_history, decision, tuned = _feature_phase(net, phases, feeds, config, class_weight, console,
                                                            fine_tune_from, whole, session)
            extra.save({"epoch": len(phase_history["loss"]), "best": 0.0, "wait": 0, "done": True, "phase": 1,
                        "phase_history": phase_history, "fine_tune_decision": decision, "tuned_history": tuned},
                       net.wrapper.variables, [], None)
        else:
            phase_history = fit_phase(net, phase, epochs, lr, feeds, config, extra, this, class_weight, console)
            tuned = this.get("tuned_history") or {} if this and phase == 1 else tuned
        if phase == 1:
            phase_boundary = len(phase_history.get("loss", []))
        for part in (phase_history, tuned if phase == 1 else {}):  # a fine-tuning trial kept: phase 2's epochs
            for k, v in part.items():
                history.setdefault(k, []).extend(v)
    net.fine_tune_decision = decision
    return net, history, phase_boundary


def _feature_phase(net, phases, feeds: tuple, config: TrainConfig, class_weight: dict | None, console,
                   fine_tune_from: str, whole: bool, session) -> tuple[dict, dict | None, dict]:
    """Phase 1 as the feature head; where the run decides from the data whether to fine-tune
    (`decide`), also that decision, and the fine-tuning trial's history when it was kept."""
    from ..augment import feature_views

    several = session is not None and session.distributed
    if decide.measured(config, whole, session):
        views = feature_views(config.flip, config.feature_crops) if config.augment else {"as is": None}
        train_feed, val_feed = feeds
        cut, why = decide.prepare(net, fine_tune_from, len(views), len(train_feed.plan.indices),
                                     len(val_feed.plan.indices))
        if cut is not None:
            acts = decide.activations(net, cut, feeds, views, console)
            history = fit_feature_head(net, feeds, config, class_weight, console, crops=True,
                                       features=decide.features(cut, acts))
            decision, tuned = decide.decide(net, cut, acts, config, class_weight, console)
            return history, decision, tuned
        decision = decide.by_count(config, len(train_feed.plan.indices), why)
        console.print(decide.describe(decision))
    else:
        decision = decide.given(config)
    # Crop views only pay when this head is the final one; before fine-tuning it is a start.
    final = not any(p == 2 and e > 0 for p, e, _ in phases) and not (decision and decision["decision"] == "fine-tune")
    with outside_distribution() if several else contextlib.nullcontext():
        history = fit_feature_head(net, feeds, config, class_weight, console, crops=final, session=session)
    return history, decision, {}
