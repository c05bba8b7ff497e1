"""The command line: clear one-line errors for bad input, and the run goes on where it should."""
from __future__ import annotations

import json

from tests.conftest import run_cli


def test_unknown_export_format_lists_the_known_ones(tmp_path):
    result = run_cli("export", tmp_path / "model.keras", "--format", "tensorrt")
    assert result.returncode == 2
    assert "unknown format 'tensorrt'" in result.stderr and "onnx, openvino, tflite" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_missing_model(tmp_path):
    result = run_cli("export", tmp_path / "model.keras")
    assert result.returncode == 2 and "model file not found" in result.stderr


def test_predict_skips_bad_images_and_goes_on(coral, assets, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = assets / "images" / "imagenet-photos" / "parrot.jpg"
    result = run_cli("predict", coral / "mobilenet_v2_1.0_224_quant.tflite", bad, good, tmp_path / "gone.png",
                     "--labels", coral / "imagenet_labels.txt", "--json")
    assert result.returncode == 1  # some images failed
    assert f"{bad}: not a readable image" in result.stderr.replace("\n", "")
    assert "gone.png: no such file" in result.stderr.replace("\n", "")
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [x["top_k"][0][0] for x in lines] == ["macaw"]
    assert "Traceback" not in result.stderr


def test_predict_truncated_model(tmp_path, coral, assets):
    bad = tmp_path / "model.tflite"
    bad.write_bytes((coral / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()[:1000])
    result = run_cli("predict", bad, assets / "images/imagenet-photos/parrot.jpg", "--labels", coral / "imagenet_labels.txt")
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr and str(bad) in result.stderr.replace("\n", "")


def test_train_single_class_dataset(tmp_path, flowers):
    import shutil

    (tmp_path / "ds" / "daisy").mkdir(parents=True)
    shutil.copy(next((flowers / "daisy").iterdir()), tmp_path / "ds" / "daisy" / "a.jpg")
    result = run_cli("train", tmp_path / "ds", "--backbone", "simple_cnn", "--weights", "none")
    assert result.returncode == 2 and "only one class" in result.stderr


def test_unknown_backbone(tmp_path, flowers):
    result = run_cli("train", flowers, "--backbone", "vgg99", "--out", tmp_path)
    assert result.returncode == 2 and "unknown backbone 'vgg99'" in result.stderr and "mobilenet_v2" in result.stderr


def test_formats_and_backbones_listed():
    assert "edgetpu" in run_cli("formats").stdout
    listed = run_cli("backbones").stdout
    for name in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "efficientnet_b0", "simple_cnn"):
        assert name in listed


# --- issue 11: escaped output, range-checked options ---------------------------------------------
def _escaped_setup(coral, assets, tmp_path):
    import shutil

    photo = tmp_path / "photo[copy].jpg"
    shutil.copy(assets / "images/imagenet-photos/parrot.jpg", photo)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join("[/]" if line == "macaw" else line
                                for line in (coral / "imagenet_labels.txt").read_text().splitlines()) + "\n")
    return photo, labels


def test_user_text_is_printed_as_it_is_never_as_markup(coral, assets, tmp_path):
    """A file named photo[copy].jpg and a label `[/]` print verbatim, through both the fast predict
    path and the full command line; a path with `[/` in an error message does not crash Rich."""
    photo, labels = _escaped_setup(coral, assets, tmp_path)
    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    for env in ({}, {"EDGECLS_NO_FAST_PATH": "1"}):
        result = run_cli("predict", model, photo, "--labels", labels, env=env)
        assert result.returncode == 0, result.stderr
        assert f"{photo}: [/] (" in result.stdout, result.stdout
    bad = tmp_path / "[/oops" / "m[red].tflite"
    for env in ({}, {"EDGECLS_NO_FAST_PATH": "1"}):
        result = run_cli("predict", bad, photo, "--labels", labels, env=env)
        assert result.returncode == 2 and f"{bad}: model file not found" in result.stderr.replace("\n", "")
        assert "MarkupError" not in result.stderr and "Traceback" not in result.stderr
    result = run_cli("stream", model, tmp_path, "--labels", labels, "--max-frames", "1", "--stats-interval", "0")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["top_k"][0][0] == "[/]"


def test_fast_and_full_predict_print_the_same(coral, assets, tmp_path):
    photo, labels = _escaped_setup(coral, assets, tmp_path)
    args = ["predict", coral / "mobilenet_v2_1.0_224_quant.tflite", photo, tmp_path / "gone.jpg", "--labels", labels, "-k", "2",
            "--interpolation", "linear", "--resize", "center_crop"]
    fast, full = run_cli(*args), run_cli(*args, env={"EDGECLS_NO_FAST_PATH": "1"})
    assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr) == \
        (1, full.stdout, f"skipped {tmp_path / 'gone.jpg'}: no such file\n")


BAD_OPTIONS = [
    (["serve", "{model}", "--labels", "{labels}", "--queue-size", "0"], "--queue-size must be at least 1, got 0"),
    (["serve", "{model}", "--labels", "{labels}", "--learn-margin", "1.5"], "--learn-margin must be in [0, 1], got 1.5"),
    (["serve", "{model}", "{tmp}/no-video.mp4", "--labels", "{labels}"], "{tmp}/no-video.mp4: no such file or folder"),
    (["train", "{flowers}", "--learning-rate", "-1"], "--learning-rate must be in (0, 10], got -1.0"),
    (["train", "{flowers}", "--learning-rate", "0"], "--learning-rate must be in (0, 10]"),
    (["train", "{flowers}", "--input-size", "x"], "--input-size 'x': expected N or HxW"),
    (["train", "{flowers}", "--input-size", "0"], "--input-size '0': expected N or HxW"),
    (["train", "{flowers}", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "{flowers}", "--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
    (["train", "{flowers}", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["predict", "{model}", "{photo}", "--labels", "{labels}", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["predict", "{model}", "{photo}", "--labels", "{labels}", "--threads", "0"], "--threads must be from 1 to 1024, got 0"),
    (["predict", "{model}", "{photo}", "--labels", "{labels}", "--threads", "99999999999"], "--threads must be from 1 to 1024"),
    (["predict", "{model}", "{photo}", "--labels", "{labels}", "--interpolation", "bicubic"],
     "--interpolation 'bicubic': expected one of area, linear, cubic"),
    (["predict", "{model}", "{photo}", "--labels", "{labels}", "--resize", "crop"], "--resize 'crop': expected one of stretch"),
    (["export", "{tmp}/m.keras", "--format", ""], "--format '': expected a name or a comma list"),
    (["export", "{tmp}/m.keras", "--format", "tflite,"], "--format 'tflite,'"),
    (["export", "{tmp}/m.keras", "--max-accuracy-drop", "-1"], "--max-accuracy-drop must be in [0, 100], got -1.0"),
    (["export", "{tmp}/m.keras", "--calibration-count", "0"], "--calibration-count must be at least 1"),
    (["bench", "{model}", "--runs", "0"], "runs must be an integer >= 1, got 0"),
    (["bench", "{model}", "--batch", "0"], "batch must be an integer >= 1, got 0"),
    (["bench", "{model}", "--threads", "0"], "--threads must be from 1 to 1024, got 0"),
    (["bench", "{model}", "--timeout", "0"], "--timeout must be a positive number"),
    (["stream", "{model}", "{tmp}", "--fps", "-1"], "--fps must be at least 0, got -1.0"),
    (["stream", "{model}", "{tmp}", "--max-frames", "-1"], "--max-frames must be at least 0, got -1"),
    (["stream", "{model}", "{tmp}", "--top-k", "0"], "--top-k must be at least 1"),
    (["stream", "{model}", "{tmp}", "--interpolation", "nearest"], "--interpolation 'nearest': expected one of"),
    (["evaluate", "{model}", "{flowers}", "--threads", "0"], "--threads must be from 1 to 1024"),
    (["evaluate", "{model}", "{flowers}", "--split", "valid"], "--split 'valid': expected one of train, val"),
    (["evaluate", "{model}", "{flowers}", "--resize", "fill"], "--resize 'fill': expected one of stretch, center_crop"),
    (["quickstart", "--epochs", "0", "--out", "{tmp}/q"], "--epochs must be at least 1"),
    (["report", "compare", "{tmp}/list.json", "{tmp}/list.json"], "a JSON list, expected an object"),
    (["bench", "{model}", "--out", "{tmp}/list.json"], "--out {tmp}/list.json: is a file, expected a folder"),
    (["train", "{flowers}", "--out", "{tmp}/list.json"], "--out {tmp}/list.json: is a file"),
    (["evaluate", "{model}", "{flowers}", "--out", "{tmp}/list.json"], "--out {tmp}/list.json: is a file"),
]


def test_every_option_is_range_checked_before_work(coral, assets, flowers, tmp_path):
    """Each bad value is one clear line and exit code 2, before anything is trained, converted,
    measured or written."""
    (tmp_path / "list.json").write_text("[1, 2]")
    values = {"flowers": flowers, "model": coral / "mobilenet_v2_1.0_224_quant.tflite", "tmp": tmp_path,
              "photo": assets / "images/imagenet-photos/parrot.jpg", "labels": coral / "imagenet_labels.txt"}
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in BAD_OPTIONS:
        result = run_cli(*[a.format(**values) for a in args])
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message.format(**values) in result.stderr.replace("\n", ""), (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_predict_prints_only_edgecls_output(coral, assets):
    """No LiteRT `INFO: Created TensorFlow Lite XNNPACK delegate` line, on either predict path;
    LiteRT's other stderr output is still passed on (it is captured only around its set-up)."""
    for env in ({}, {"EDGECLS_NO_FAST_PATH": "1"}):
        result = run_cli("predict", coral / "mobilenet_v2_1.0_224_quant.tflite", assets / "images/imagenet-photos/parrot.jpg",
                         "--labels", coral / "imagenet_labels.txt", env=env)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert result.stdout.count("\n") == 1 and "macaw" in result.stdout


def test_litert_stderr_filter_keeps_other_lines():
    import subprocess
    import sys

    code = ("import os\nfrom edgecls.engines.litert import quiet_stderr\nwith quiet_stderr():\n"
            "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nERROR: real problem\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "ERROR: real problem\n"


def test_plain_predict_loads_neither_typer_nor_rich(coral, assets):
    """A cold `edgecls predict` pays for every import (bench/cold_predict.py measures it): a plain
    call runs without Typer, Rich, JSON, argparse, hashlib (no manifest) or the generated TFLite
    schema. Importing edgecls.cli runs nothing; its main() (the console script) runs the call."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["edgecls", "predict", {str(coral / 'mobilenet_v2_1.0_224_quant.tflite')!r},
                    {str(assets / 'images/imagenet-photos/parrot.jpg')!r}, "--labels", {str(coral / 'imagenet_labels.txt')!r}]
        import edgecls.cli
        print("imported")
        try:
            edgecls.cli.main()
        except SystemExit as exc:
            heavy = sorted(m for m in ("typer", "click", "rich", "json", "argparse", "hashlib", "ai_edge_litert.schema_py_generated",
                                       "tensorflow", "keras") if m in sys.modules)
            print("exit", exc.code, "loaded", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported\n"), proc.stdout  # the import itself predicted nothing
    assert "macaw" in proc.stdout and "exit 0 loaded []" in proc.stdout, proc.stdout


def test_fast_predict_parser_hands_anything_unusual_to_the_full_command_line():
    from pathlib import Path

    import pytest

    from edgecls.cli.plain_predict import NotPlain, parse_plain_predict

    args = parse_plain_predict(["m.tflite", "a[1].jpg", "b.png", "--labels=l.txt", "-k", "2", "--json", "--threads", "3",
                           "--interpolation", "cubic"])
    assert args["artifact"] == Path("m.tflite") and args["images"] == [Path("a[1].jpg"), Path("b.png")]
    assert args["interpolation"] == "cubic"
    assert (args["labels"], args["top_k"], args["threads"], args["as_json"]) == (Path("l.txt"), 2, 3, True)
    for argv in (["m.tflite", "a.jpg", "--explain"], ["m.tflite", "a.jpg", "-k"], ["m.tflite", "a.jpg", "-k", "x"],
                 ["m.tflite"], ["m.tflite", "a.jpg", "--help"], ["m.tflite", "--", "-a.jpg"], ["m.tflite", "a.jpg", "-k2"]):
        with pytest.raises(NotPlain):
            parse_plain_predict(argv)


def test_cli_package_exposes_the_typer_app_and_runs_nothing_on_import():
    """`from edgecls.cli import app` is the Typer application however often it is imported (a
    submodule must not shadow it), and every command group of commands.GROUPS is registered."""
    import typer

    import edgecls.cli
    import edgecls.cli.commands as commands
    from edgecls.cli import app

    assert isinstance(app, typer.Typer) and edgecls.cli.app is app
    names = {c.name or c.callback.__name__ for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert {"train", "export", "predict", "evaluate", "bench", "report", "stream", "cv", "tune"} <= names
    assert len(commands.GROUPS) == len(set(commands.GROUPS))
