"""Where the int8 error of a LiteRT model enters: float vs int8 interpreter, tensor by tensor.

For a model trained by edgecls, the full-integer LiteRT model is made the way `edgecls export`
makes it, with the converter's min/max ranges and with least-squared-error ranges
(`edgecls/export/tflite_ranges.py`), each with and without bias correction; the float LiteRT
model is the reference. On photos of a held-out folder (never the calibration images), each op's
output is compared with the float model's: relative error (rms of int8 - float over the float
tensor's std: the error carried from every layer before, not only this one's rounding), the
error in the tensor's own int8 steps, and the tensor's spread in steps (how many of the 256 steps
its values use). Then top-1 agreement with the Keras model and accuracy for each variant.

    python bench/int8_layers.py runs/eurosat/model.keras DATA/test [--photos 40] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def variants(model_path: Path):
    """The float model, the calibration images, and the int8 variants (name -> flatbuffer)."""
    import tensorflow as tf

    from edgecls.console import make_console
    from edgecls.export.context import ExportContext
    from edgecls.export.pipeline import _trained_model, _verification_set, check_request
    from edgecls.export.tflite_bias import correct_tflite_biases
    from edgecls.export.tflite_ranges import calibrated_model, mse_ranges, quantized
    from edgecls.keras_model import KerasScorer

    manifest, dataset = _trained_model(model_path, None)
    chosen = _verification_set(manifest, dataset, check_request("tflite", "int8"), None, 300, make_console(stderr=True))
    scorer = KerasScorer(model_path)
    ctx = ExportContext(model_path, scorer.manifest, chosen.calibration)
    ctx.keras_model = scorer.model
    calibration = ctx.calibration_inputs()
    saved = str(ctx.saved_model(batch=1))
    float_model = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    calibrated = calibrated_model(converter)
    out = {"min/max": quantized(calibrated, {}, tf.uint8)}
    out["least squared error"] = quantized(calibrated, mse_ranges(calibrated, calibration), tf.uint8)
    for name in list(out):
        out[name + " + bias correction"] = correct_tflite_biases(out[name], float_model, calibration)[0]
    ctx.cleanup()
    return scorer, float_model, out


def profile(float_model: bytes, int8_model: bytes, images: np.ndarray) -> list[tuple]:
    """Per op: (index, op, tensor, relative error, rms error in steps, std in steps)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def interpreter(model):
        it = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        return it

    fi, qi = interpreter(float_model), interpreter(int8_model)
    skip = ("QUANTIZE", "DEQUANTIZE")
    fops = [op for op in fi._get_ops_details() if op["op_name"] not in skip]
    qops = [op for op in qi._get_ops_details() if op["op_name"] not in skip]
    if len(fops) != len(qops):
        sys.exit(f"the float and int8 graphs differ ({len(fops)} vs {len(qops)} ops)")
    details = qi.get_tensor_details()
    err, var = np.zeros(len(qops)), np.zeros(len(qops))
    feed = qi.get_input_details()[0]
    scale, zero = feed["quantization"]
    for x in images:
        fi.set_tensor(fi.get_input_details()[0]["index"], x[None].astype(np.float32))
        fi.invoke()
        qi.set_tensor(feed["index"], np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8)[None])
        qi.invoke()
        for k, (fo, qo) in enumerate(zip(fops, qops)):
            f = fi.get_tensor(fo["outputs"][0]).astype(np.float64)
            s, z = details[qo["outputs"][0]]["quantization"]
            q = (qi.get_tensor(qo["outputs"][0]).astype(np.float64) - z) * s
            err[k] += ((q - f) ** 2).mean()
            var[k] += f.var()
    rows = []
    for k, qo in enumerate(qops):
        step = details[qo["outputs"][0]]["quantization"][0] or 1.0
        name = details[qo["outputs"][0]]["name"].split(";")[0].split("/")[-2:]
        rows.append((k, qo["op_name"], "/".join(name), float(np.sqrt(err[k] / var[k])) if var[k] else float("nan"),
                     float(np.sqrt(err[k] / len(images)) / step), float(np.sqrt(var[k] / len(images)) / step)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("held_out", type=Path)
    ap.add_argument("--photos", type=int, default=40, help="held-out photos for the per-layer profile")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    from edgecls import data

    scorer, float_model, int8 = variants(args.model)
    pre = scorer.manifest.preprocessing
    folder = data.scan(args.held_out)
    loaded = data.load_images(folder, range(len(folder.files)), pre)
    keras = scorer.scores_resized(loaded.images).argmax(1)
    x = pre.normalize(loaded.images)
    lines = [f"# int8 error by layer: {args.model}", "", f"held out: {args.held_out} ({len(x)} photos)", "",
             "| variant | agreement with Keras | accuracy (Keras) |", "|---|---|---|"]
    for name, model in int8.items():
        it = Interpreter(model_content=model)
        it.allocate_tensors()
        feed, fetch = it.get_input_details()[0], it.get_output_details()[0]
        s, z = feed["quantization"]
        answers = []
        for image in x:
            it.set_tensor(feed["index"], np.clip(np.round(image / s + z), 0, 255).astype(np.uint8)[None])
            it.invoke()
            answers.append(int(it.get_tensor(fetch["index"])[0].argmax()))
        answers = np.asarray(answers)
        lines.append(f"| {name} | {np.mean(answers == keras):.4f} | {np.mean(answers == loaded.targets):.4f} "
                     f"({np.mean(keras == loaded.targets):.4f}) |")
    picked = x[np.linspace(0, len(x) - 1, min(args.photos, len(x))).astype(int)]
    for name in ("min/max + bias correction", "least squared error + bias correction"):
        lines += ["", f"## {name}: error carried to each op's output ({len(picked)} photos)", "",
                  "| # | op | tensor | relative error | rms error (steps) | std (steps) |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {op} | {t} | {rel:.3f} | {e:.2f} | {sd:.1f} |"
                  for k, op, t, rel, e, sd in profile(float_model, int8[name], picked)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
