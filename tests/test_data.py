"""Image-folder datasets: unreadable files are skipped and listed, unusable datasets are clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgecls import data
from edgecls.errors import DatasetError
from edgecls.preprocess import Preprocessing


def _copy_flowers(flowers, dst, per_class=4):
    for cls in sorted(p for p in flowers.iterdir() if p.is_dir())[:3]:
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, dst / cls.name / f.name)
    return dst


def test_unreadable_files_are_skipped_and_listed(flowers, tmp_path):
    root = _copy_flowers(flowers, tmp_path / "ds")
    cls = sorted(root.iterdir())[0]
    (cls / "empty.jpg").write_bytes(b"")
    (cls / "notes.png").write_text("not an image")
    (cls / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (cls / "placeholder.gif").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")  # GIF placeholder
    folder = data.scan(root)
    loaded = data.load_images(folder, np.arange(len(folder)), Preprocessing.named("tf", (64, 64)))
    assert len(loaded.targets) == 12
    skipped = {p.name: why for p, why in loaded.skipped}
    assert set(skipped) == {"empty.jpg", "notes.png", "corrupt.jpg", "placeholder.gif"}
    assert "empty" in skipped["empty.jpg"]
    summary = data.skipped_summary(loaded.skipped)
    assert "skipped 4 unreadable" in summary and str(cls / "corrupt.jpg") in summary


def test_only_image_files_are_members(flowers, tmp_path):
    """Thumbs.db, notes.txt, desktop.ini took split slots and manifest entries as unreadable
    "photos"; macOS `._x.jpg` files were skipped by train but streamed (issue 16, item 17)."""
    from edgecls.stream import FolderSource

    root = _copy_flowers(flowers, tmp_path / "ds")
    cls = sorted(root.iterdir())[0]
    for junk in ("Thumbs.db", "notes.txt", "desktop.ini", "._" + sorted(cls.iterdir())[0].name):
        (cls / junk).write_bytes(b"\x00\x05\x16\x07 not a picture")
    folder = data.scan(root)
    assert len(folder) == 12 and all(data.is_image_name(p) and not p.name.startswith(".") for p in folder.files)
    assert [p.name for p in FolderSource(cls).files] == [p.name for p in folder.files if p.parent == cls]
    (root / "only_notes").mkdir()
    (root / "only_notes" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"'only_notes' is empty; every class needs images \(1 other file\(s\) "
                                           r"ignored, such as readme.txt; image files end in \.jpg"):
        data.scan(root)


def test_empty_class_folder_is_an_error(flowers, tmp_path):
    root = _copy_flowers(flowers, tmp_path / "ds")
    (root / "zzz_empty").mkdir()
    with pytest.raises(DatasetError, match="zzz_empty.*empty"):
        data.scan(root)


def test_single_class_is_an_error(flowers, tmp_path):
    root = tmp_path / "ds"
    (root / "only").mkdir(parents=True)
    shutil.copy(next((flowers / "daisy").iterdir()), root / "only" / "a.jpg")
    with pytest.raises(DatasetError, match="only one class"):
        data.scan(root)


def test_missing_dataset_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        data.scan(tmp_path / "missing")


def test_split_is_deterministic_and_stratified(flowers):
    folder = data.scan(flowers)
    a = data.split_indices(folder.targets, 0.2, 0.1, seed=3)
    b = data.split_indices(folder.targets, 0.2, 0.1, seed=3)
    c = data.split_indices(folder.targets, 0.2, 0.1, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])
    assert np.bincount(folder.targets[a["val"]]).tolist() == [8] * 5
    assert np.bincount(folder.targets[a["test"]]).tolist() == [4] * 5
    assert not set(a["train"]) & set(a["val"]) and not set(a["val"]) & set(a["test"])
    assert len(a["train"]) + len(a["val"]) + len(a["test"]) == len(folder)


def test_take_per_class_is_balanced():
    targets = np.array([0] * 50 + [1] * 10 + [2] * 40)
    chosen = data.take_per_class(targets, 30, seed=0)
    assert np.bincount(targets[chosen]).tolist() == [10, 10, 10]


def test_label_indices_match_by_name_and_reject_unknown_classes(flowers):
    folder = data.scan(flowers)
    shuffled = ["tulips", "daisy", "roses", "dandelion", "sunflowers", "extra"]
    assert data.label_indices(folder, shuffled).tolist() == [1, 3, 2, 4, 0]
    with pytest.raises(DatasetError, match=r"\['tulips'\] are not among the model's labels"):
        data.label_indices(folder, ["daisy", "dandelion", "roses", "sunflowers"])


def test_class_with_no_readable_images_is_an_error(flowers, tmp_path):
    root = _copy_flowers(flowers, tmp_path / "ds")
    broken = root / "zz_broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (broken / "b.png").write_bytes(b"")
    folder = data.scan(root)
    with pytest.raises(DatasetError, match=r"class 'zz_broken' \(.*zz_broken\)") as info:
        data.load_images(folder, np.arange(len(folder)), Preprocessing.named("tf", (32, 32)))
    assert "a.jpg" in str(info.value)
    # A selection without that class's files is fine.
    loaded = data.load_images(folder, np.flatnonzero(folder.targets != 3), Preprocessing.named("tf", (32, 32)))
    assert len(loaded.targets) == 12


def test_evaluate_refuses_a_class_with_no_readable_images(assets, coral, tmp_path):
    """It used to report accuracy 1.0 and macro F1 1.0, with the broken class at support 0."""
    from edgecls.workflows import evaluate_model

    root = tmp_path / "ds"
    (root / "macaw").mkdir(parents=True)
    shutil.copy(assets / "images/imagenet-photos/parrot.jpg", root / "macaw" / "parrot.jpg")
    hotdog = root / "hotdog, hot dog, red hot"
    hotdog.mkdir()
    (hotdog / "hot_dog.jpg").write_bytes((assets / "images/imagenet-photos/hot_dog.jpg").read_bytes()[:300])
    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    labels = coral / "imagenet_labels.txt"
    with pytest.raises(DatasetError, match="no readable images for class 'hotdog, hot dog, red hot'"):
        evaluate_model(model, root, out_dir=tmp_path / "eval", labels=labels)
    # With the photo repaired both classes count; the 999 labels without images are stated.
    (hotdog / "hot_dog.jpg").write_bytes((assets / "images/imagenet-photos/hot_dog.jpg").read_bytes())
    result = evaluate_model(model, root, out_dir=tmp_path / "eval", labels=labels)
    assert result["accuracy"] == 1.0 and result["count"] == 2
    assert len(result["macro_excludes"]) == 999 and "daisy" in result["macro_excludes"]
    assert "left out of the macro averages" in result["table"]


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from edgecls.evaluate import compute_metrics

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d", "e"]
    targets = rng.choice([0, 1, 2, 4], 300)          # class "d" has no images
    predictions = np.where(rng.random(300) < 0.6, targets, rng.integers(0, 5, 300))
    m = compute_metrics(targets, predictions, labels)
    assert m.accuracy == pytest.approx(accuracy_score(targets, predictions))
    p, r, f, s = precision_recall_fscore_support(targets, predictions, labels=range(5), zero_division=0)
    per_class = m.per_class()
    for i, label in enumerate(labels):
        assert [per_class[label][k] for k in ("precision", "recall", "f1", "support")] == pytest.approx(
            [p[i], r[i], f[i], s[i]])
    present = [0, 1, 2, 4]
    macro = precision_recall_fscore_support(targets, predictions, labels=present, average="macro", zero_division=0)
    assert [m.macro()[k] for k in ("precision", "recall", "f1")] == pytest.approx(macro[:3])
    assert m.absent() == ["d"]
    with pytest.raises(DatasetError, match="no images"):
        compute_metrics([], [], labels)


@pytest.mark.parametrize("link,target,message", [
    ("cycle", ".", "the dataset folder or one above it"),              # used to become a 4th class of everything
    ("daisy_again", "daisy", "already listed"),                        # a duplicate class
    ("daisy/up", "..", "the dataset folder or one above it"),          # a loop inside a class
    ("roses/copy.jpg", None, "the same file as"),                      # one photo in two classes
])
def test_symlink_loops_and_duplicates_are_refused(flowers, tmp_path, link, target, message):
    root = _copy_flowers(flowers, tmp_path / "ds")
    if target is None:
        target = next((root / "daisy").iterdir())
    (root / link).symlink_to(target)
    with pytest.raises(DatasetError, match=message) as info:
        data.scan(root)
    assert str(root / link) in str(info.value)


def test_symlink_to_an_outside_folder_is_a_class(flowers, tmp_path):
    root = _copy_flowers(flowers, tmp_path / "ds")
    (root / "tulips").symlink_to(flowers / "tulips")
    folder = data.scan(root)
    assert folder.classes == ["daisy", "dandelion", "roses", "tulips"]
    assert np.bincount(folder.targets).tolist() == [4, 4, 4, 40]


def test_recorded_split_ignores_photos_added_later(flowers, tmp_path):
    """Recomputing (fractions, seed) over a grown folder moved training photos into validation."""
    root = _copy_flowers(flowers, tmp_path / "ds", per_class=10)
    folder = data.scan(root)
    parts = data.split_indices(folder.targets, 0.2, 0.1, seed=0)
    record = {"val_fraction": 0.2, "test_fraction": 0.1, "seed": 0, "files": data.split_record(folder, parts)}
    assert len(record["files"]["val"]) == 6 and all(not f.startswith("/") for f in record["files"]["val"])

    shutil.copy(next((flowers / "daisy").iterdir()), root / "daisy" / "000_new.jpg")  # sorts first
    grown = data.scan(root)
    recomputed = data.split_indices(grown.targets, 0.2, 0.1, seed=0)
    assert {grown.files[i].name for i in recomputed["val"]} != {folder.files[i].name for i in parts["val"]}
    recorded = data.recorded_split(grown, record)
    for k in ("train", "val", "test"):
        assert [grown.files[i] for i in recorded[k]] == [folder.files[i] for i in parts[k]]
    assert len(recorded["all"]) == len(folder) + 1
    # Old manifests (fractions and seed only) still work, recomputed as before.
    old = data.recorded_split(grown, {"val_fraction": 0.2, "test_fraction": 0.1, "seed": 0})
    assert all(np.array_equal(old[k], recomputed[k]) for k in recomputed)


def test_recorded_split_with_a_missing_validation_file_is_an_error(flowers, tmp_path):
    root = _copy_flowers(flowers, tmp_path / "ds", per_class=10)
    folder = data.scan(root)
    parts = data.split_indices(folder.targets, 0.2, 0.0, seed=0)
    record = {"files": data.split_record(folder, parts)}
    (root / record["files"]["val"][0]).unlink()
    (root / record["files"]["train"][0]).unlink()
    with pytest.raises(DatasetError, match=f"1 file.*missing.*{record['files']['val'][0]}"):
        data.recorded_split(data.scan(root), record)
    with pytest.raises(DatasetError, match="source.split.files"):
        data.recorded_split(folder, {"files": {"val": "daisy/a.jpg"}})


def test_calibration_folder_is_sampled_per_class_and_reports_skipped(flowers, tmp_path, capsys):
    """It used to take the alphabetically first files (daisy only) and hide unreadable ones."""
    from edgecls.export.pipeline import _calibration_from_dir

    root = tmp_path / "calib"
    shutil.copytree(flowers, root, ignore=shutil.ignore_patterns("*.txt"))
    broken = sorted((root / "daisy").iterdir())
    for f in broken:
        f.write_bytes(b"\xff\xd8\xff\xe0garbage")
    p = Preprocessing.named("tf", (32, 32))
    a = data.load_calibration_folder(root, p, 20, seed=1)
    b = data.load_calibration_folder(root, p, 20, seed=1)
    assert a.files == b.files and np.array_equal(a.images, b.images)
    assert {f.parent.name for f in a.files} == {"dandelion", "roses", "sunflowers", "tulips"}
    assert np.bincount(a.targets).tolist() == [0, 4, 4, 4, 4]
    assert len(a.skipped) == 4 and all(f.parent.name == "daisy" for f, _ in a.skipped)
    images = _calibration_from_dir(root, p, 20)
    assert images.shape == (16, 32, 32, 3)
    assert "calibration: skipped 4 unreadable" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="none of the 4 sampled"):
        data.load_calibration_folder(root / "daisy", p, 4)


def test_unlistable_class_folder_is_a_clear_error(flowers, tmp_path):
    import os

    root = _copy_flowers(flowers, tmp_path / "ds")
    locked = root / "roses" / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user that ignores permissions (root)")
        with pytest.raises(DatasetError, match="locked: cannot list this folder"):
            data.scan(root)
    finally:
        locked.chmod(0o755)
