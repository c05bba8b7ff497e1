"""Check images: stored beside an artifact with the answers it gave, chosen by margin, and run by the
doctor; the export stores them for every kept artifact."""
from __future__ import annotations

import pytest

ANSWERS = {"parrot.jpg": "macaw", "cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform",
           "bird.bmp": "chickadee", "hot_dog.jpg": "hotdog, hot dog, red hot",
           "dragonfly.bmp": "dragonfly, darning needle, devil's darning needle, sewing needle, snake feeder, "
                            "snake doctor, mosquito hawk, skeeter hawk"}


@pytest.fixture()
def coral_copy(tmp_path, coral):
    import shutil

    from edgecls.runtime import Classifier

    model = tmp_path / "model.tflite"
    shutil.copy(coral / "mobilenet_v2_1.0_224_quant.tflite", model)
    return model, Classifier.from_artifact(model, labels=coral / "imagenet_labels.txt")


def test_selection_keeps_wide_margin_right_answers(coral_copy, assets):
    from edgecls.check_images import checks_dir, write_checks
    from edgecls.preprocess import read_rgb

    model, clf = coral_copy
    photos = list(ANSWERS)
    pictures = [clf.preprocessing.resize_image(read_rgb(assets / "images/imagenet-photos" / p)) for p in photos]
    truths = [ANSWERS[p] for p in photos]
    truths[0] = "toucan"  # a wrong "truth": the parrot must not be chosen however confident
    entries, notes = write_checks(model, clf, pictures, truths, count=3)
    assert len(entries) == 3 and not notes
    assert "macaw" not in [e["top1"] for e in entries]
    assert len({e["top1"] for e in entries}) == 3
    assert sorted(p.name for p in checks_dir(model).iterdir()) == ["0.png", "1.png", "2.png"]
    # The cat (0.78) leads by less than the others: the widest margins are kept.
    assert "Egyptian cat" not in [e["top1"] for e in entries]


def test_run_checks_reports_a_modified_image(coral_copy, assets):
    from edgecls.check_images import checks_dir, run_checks, write_checks
    from edgecls.manifest import Manifest
    from edgecls.preprocess import read_rgb

    model, clf = coral_copy
    pictures = [read_rgb(assets / "images/imagenet-photos" / p) for p in ("parrot.jpg", "bird.bmp")]
    entries, _ = write_checks(model, clf, pictures, select=False)
    manifest = Manifest("tflite", "int8", clf.labels, clf.preprocessing, checks=entries)
    assert all(r["ok"] for r in run_checks(model, manifest, clf))
    image = checks_dir(model) / "1.png"
    image.write_bytes(image.read_bytes() + b"\0")
    results = run_checks(model, manifest, clf)
    assert results[0]["ok"] and not results[1]["ok"] and "modified since export" in results[1]["problem"]


def test_export_stores_check_images_the_doctor_passes(flowers_exports):
    """Every kept artifact of the export matrix carries check images its own runtime answers alike."""
    from edgecls.doctor import diagnose
    from edgecls.manifest import load_manifest

    kept = [r for r in flowers_exports.values() if r.passed and r.quant != "edgetpu"]
    assert kept
    for report in kept:
        manifest = load_manifest(report.path)
        assert 1 <= len(manifest.checks) <= 3, report.key
        assert all(c["top1"] == c["label"] for c in manifest.checks), report.key
    paths = [r.path for r in kept if r.key in ("tflite:int8", "onnx:int8", "openvino:int8")]
    doc = diagnose(paths, sweep=False)
    answers = [f for f in doc["findings"] if f["name"] == "answers"]
    assert len(answers) == len(paths) and all(f["status"] == "ok" for f in answers), answers
