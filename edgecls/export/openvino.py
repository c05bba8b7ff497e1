"""OpenVINO IR export: fp32, fp16-compressed weights, NNCF post-training int8.

NNCF's overflow fix stores weights in 7 bits so that x86-64 CPUs without VNNI (AVX2, AVX-512
without VNNI) cannot saturate their uint8 x int8 products; NNCF's default fixes only the first
layer. "portable" (the default) fixes every layer; "x86-vnni" and "arm" keep full 8-bit weights.
"""
from __future__ import annotations

from pathlib import Path

from . import ExportSpec
from .context import ExportContext


OVERFLOW_FIX = {"portable": "enable", "x86-avx2": "enable", "x86-vnni": "disable", "arm": "disable"}


def int8_scheme(int8_cpu: str) -> dict:
    """The quantization choices recorded in the manifest for an NNCF int8 export."""
    return {"int8_cpu": int8_cpu, "tool": "nncf", "preset": "performance", "overflow_fix": OVERFLOW_FIX[int8_cpu],
            "activations": "uint8", "weights": "int8", "per_channel": True}


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path, int8_cpu: str | None = None) -> None:
    from ..engines.openvino import import_openvino

    ov = import_openvino()  # telemetry declined first: a conversion sends an event too
    model = ov.convert_model(str(ctx.saved_model(batch=None)))
    if spec.quant == "int8":
        import nncf

        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        scheme = int8_scheme(int8_cpu or "portable")
        calibration = ctx.calibration_inputs()
        dataset = nncf.Dataset(list(calibration), lambda x: x[None])
        advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(scheme["overflow_fix"]))
        model = nncf.quantize(model, dataset, subset_size=len(calibration), preset=nncf.QuantizationPreset.PERFORMANCE,
                              advanced_parameters=advanced)
        ctx.quantization_scheme = scheme
    model.set_rt_info(ctx.embedded_manifest, ["edgecls", "manifest"])
    # save_model writes .xml then .bin; the caller writes into a private folder and renames.
    ov.save_model(model, str(out_path), compress_to_fp16=spec.quant == "fp16")

