"""OpenVINO IR export: fp32, fp16-compressed weights, NNCF post-training int8."""
from __future__ import annotations

from pathlib import Path

from . import ExportSpec
from .context import ExportContext


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path) -> None:
    import openvino as ov

    model = ov.convert_model(str(ctx.saved_model(batch=None)))
    if spec.quant == "int8":
        import nncf

        calibration = ctx.calibration_inputs()
        dataset = nncf.Dataset(list(calibration), lambda x: x[None])
        model = nncf.quantize(model, dataset, subset_size=len(calibration), preset=nncf.QuantizationPreset.PERFORMANCE)
    model.set_rt_info(ctx.embedded_manifest, ["edgecls", "manifest"])
    # save_model writes .xml then .bin; the caller writes into a private folder and renames.
    ov.save_model(model, str(out_path), compress_to_fp16=spec.quant == "fp16")

