"""Class imbalance on a 40/40/40/10/5 subset of flowers-small: counts, warnings, oversampling, metrics."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

COUNTS = {"daisy": 40, "dandelion": 40, "roses": 40, "sunflowers": 10, "tulips": 5}


@pytest.fixture(scope="module")
def imbalanced(flowers, tmp_path_factory):
    root = tmp_path_factory.mktemp("imbalanced")
    for name, n in COUNTS.items():
        (root / name).mkdir()
        for photo in sorted((flowers / name).iterdir())[:n]:
            shutil.copy(photo, root / name / photo.name)
    return root


def test_oversampling_balances_and_keeps_every_image():
    from edgecls.imbalance import oversampled

    targets = np.repeat(np.arange(5), [32, 32, 32, 8, 4])
    idx = oversampled(np.arange(len(targets)), targets, seed=0)
    assert list(np.bincount(targets[idx])) == [32] * 5
    assert set(idx) == set(range(len(targets)))
    # Each minority image is repeated about equally often (8 times +- 1), not a few of them many times.
    reps = np.bincount(idx[targets[idx] == 4])
    assert reps.max() - reps[reps > 0].min() <= 1


def test_imbalance_metrics_agree_with_evaluate():
    from edgecls.evaluate import compute_metrics
    from edgecls.imbalance import imbalance_metrics

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [50, 30, 10, 5])
    pred = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 4, len(y)))
    labels = ["a", "b", "c", "d"]
    ours, theirs = imbalance_metrics(y, pred, labels), compute_metrics(y, pred, labels)
    assert ours["accuracy"] == pytest.approx(theirs.accuracy)
    per = theirs.per_class()
    assert ours["balanced_accuracy"] == pytest.approx(np.mean([per[k]["recall"] for k in labels]))
    for k in labels:
        for m in ("precision", "recall", "f1"):
            assert ours["per_class"][k][m] == pytest.approx(per[k][m])


def test_training_reports_counts_and_warns_on_tiny_classes(imbalanced, mobilenet_weights, tmp_path):
    from rich.console import Console

    from edgecls.cv import scores_from_confusion
    from edgecls.train import TrainConfig, train

    buf = io.StringIO()
    config = TrainConfig(weights=str(mobilenet_weights), input_size=(96, 96), epochs=2, fine_tune_epochs=0,
                         batch_size=16, learning_rate=5e-3, augment=False, oversample=True)
    result = train(imbalanced, tmp_path, config, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "training images per class: daisy 32, dandelion 32, roses 32, sunflowers 8, tulips 4" in text
    assert "tiny classes" in text and "tulips (4)" in text and "sunflowers (8)" in text
    scores = scores_from_confusion(result.metrics["val"]["confusion_matrix"], result.labels)
    assert 0 <= scores["balanced_accuracy"] <= 1 and scores["accuracy"] == pytest.approx(result.metrics["val"]["accuracy"])
