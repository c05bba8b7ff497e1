"""Retraining across rounds (issue 26 item 4): the held-out photos of round 1 stay held out in round
2 (a split carried by file, also through a relabelling). The two real rounds of training, and the
report that scores both models on the same fixed test photos, are in tests/test_loop_e2e.py."""
from __future__ import annotations

import numpy as np


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
