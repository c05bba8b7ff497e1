"""Retraining across rounds (issue 26 item 4): the held-out photos of round 1 stay held out in round
2 (a split carried by file, also through a relabelling), and round 2's report scores both models on
the same fixed test photos, paired, and on the photos new to the round."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

TRAIN = ["--backbone", "simple_cnn", "--weights", "none", "--input-size", "32", "--epochs", "2", "--batch-size", "16"]


def test_the_carried_split_keeps_held_out_photos_held_out(tmp_path):
    from edgecls.data import ImageFolder
    from edgecls.train.rounds import carried_split

    names = ["a/1.jpg", "a/2.jpg", "a/3.jpg", "b/1.jpg", "b/2.jpg"] + [f"{c}/n{i}.jpg" for c in "ab" for i in range(10)]
    names = [n if n != "a/3.jpg" else "b/3.jpg" for n in names]  # a/3 was held out, then relabelled to b
    files = [tmp_path / n for n in names]
    folder = ImageFolder(tmp_path, ["a", "b"], files, np.asarray([0 if n.startswith("a/") else 1 for n in names]))
    previous = {"train": ["a/1.jpg", "b/1.jpg"], "val": ["a/2.jpg"], "test": ["b/2.jpg", "a/3.jpg", "a/gone.jpg"]}
    split, carry = carried_split(folder, previous, 0.2, 0.2, 0)
    where = {names[i]: part for part in ("train", "val", "test") for i in split[part]}
    assert where["a/1.jpg"] == where["b/1.jpg"] == "train" and where["a/2.jpg"] == "val"
    assert where["b/2.jpg"] == where["b/3.jpg"] == "test"        # the relabelled photo stays in test
    assert carry["held_out_gone"] == ["a/gone.jpg"] and len(carry["new"]) == 20
    new_parts = [where[f"{c}/n{i}.jpg"] for c in "ab" for i in range(10)]
    assert new_parts.count("test") == 4 and new_parts.count("val") == 4  # new photos split by the fractions
    assert sorted(np.concatenate([split[k] for k in ("train", "val", "test")])) == list(range(len(names)))


@pytest.mark.slow  # two trainings (TensorFlow start-up twice): about 70 s on 2 cores
def test_round_two_keeps_round_one_test_photos_out_and_reports_both_models(flowers, tmp_path):
    """Two real classes of flowers-small: round 1 on 20 photos each (a quarter held out as test),
    round 2 after 20 more each arrived, one round-1 test photo relabelled meanwhile."""
    data = tmp_path / "data"
    for name in ("daisy", "sunflowers"):
        photos = sorted((flowers / name).glob("*.jpg"))
        (data / name).mkdir(parents=True)
        for p in photos[:20]:
            shutil.copyfile(p, data / name / p.name)
    r1 = run_cli("train", data, "--out", tmp_path / "r1", *TRAIN, "--test-fraction", "0.25", "--val-fraction", "0.2")
    assert r1.returncode == 0, r1.stderr
    split1 = json.loads((tmp_path / "r1/model.keras.json").read_text())["source"]["split"]["files"]
    for name in ("daisy", "sunflowers"):
        for p in sorted((flowers / name).glob("*.jpg"))[20:40]:
            shutil.copyfile(p, data / name / p.name)
    moved = next(f for f in split1["test"] if f.startswith("daisy/"))
    (data / moved).rename(data / "sunflowers" / Path(moved).name)   # relabelled on the device
    r2 = run_cli("train", data, "--out", tmp_path / "r2", *TRAIN, "--test-fraction", "0.25", "--val-fraction", "0.2",
                 "--previous", tmp_path / "r1")
    assert r2.returncode == 0, r2.stderr
    split2 = json.loads((tmp_path / "r2/model.keras.json").read_text())["source"]["split"]["files"]
    held1 = {Path(f).name for f in split1["test"] + split1["val"]}
    assert not held1 & {Path(f).name for f in split2["train"]}, "round 2 trained on a round-1 held-out photo"
    assert {Path(f).name for f in split1["test"]} <= {Path(f).name for f in split2["test"]}
    assert f"sunflowers/{Path(moved).name}" in split2["test"]
    report = json.loads((tmp_path / "r2/rounds.json").read_text())
    fixed, new = report["fixed_test"], report["new_held_out"]
    assert fixed["count"] == len(split1["test"]) and report["fixed_split"] == "test"
    paired = fixed["paired"]
    assert 0 <= paired["p_value"] <= 1 and paired["count"] == fixed["count"]
    assert paired["difference"] == (paired["a_only"] - paired["b_only"]) / fixed["count"]
    assert new["count"] >= 8 and 0 <= new["new_accuracy"] <= 1 and 0 <= new["previous_accuracy"] <= 1
    assert "McNemar" in (tmp_path / "r2/rounds.md").read_text()
    assert json.loads((tmp_path / "r2/metrics.json").read_text())["rounds"]["fixed_test"]["count"] == fixed["count"]
    assert "fixed test" in r2.stderr + r2.stdout
