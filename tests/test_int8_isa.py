"""int8 artifacts answer the same on a CPU without VNNI as on the host that verified them.

On an x86 host with VNNI, the ONNX artifact runs under qemu-user emulating a Haswell CPU (AVX2,
no AVX-512, no VNNI; onnxruntime dispatches on CPUID, so it takes its AVX2 integer kernels there,
where uint8 x int8 products saturate unless the weights leave headroom) and the OpenVINO IR with
oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA). LiteRT's XNNPACK widens products to 32 bits on every
CPU. On any other host the native run of the export tests is already the check for its own ISA.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecls.cpu import cpu_info

ROOT = Path(__file__).resolve().parent.parent
COUNT = 16  # photos per artifact: emulation is ~50x slower; a saturating model differs by > 0.05 on 26% of photos


def _scores(prefix: list[str], images: Path, out: Path, artifacts: list[Path], env: dict | None = None) -> dict:
    cmd = [*prefix, sys.executable, str(ROOT / "bench" / "int8_fidelity.py"), "--worker", str(images), str(out),
           *map(str, artifacts)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(np.load(out))


def _vnni_host_or_skip() -> None:
    host = cpu_info()
    if host["class"] != "x86-vnni":
        pytest.skip(f"host CPU class is {host['class']}: the export tests ran int8 natively on it")


def _images(flowers, artifact, count: int, tmp_path: Path) -> Path:
    from edgecls import data
    from edgecls.runtime import Classifier

    folder = data.scan(flowers)
    pick = np.linspace(0, len(folder.files) - 1, count).astype(int)
    path = tmp_path / f"images{count}.npy"
    np.save(path, data.load_images(folder, pick, Classifier.from_artifact(artifact).preprocessing).images)
    return path


def _assert_same(a: np.ndarray, b: np.ndarray, key: str) -> None:
    # No saturation: both ISAs compute the same integer sums, so answers are identical and
    # probabilities differ at most by float rounding in requantization (measured: 0.0). Full
    # 8-bit weights (--int8-cpu x86-vnni) differ by up to 0.64 (ONNX) and 0.72 (OpenVINO) here.
    assert np.array_equal(a.argmax(1), b.argmax(1)), key
    assert np.abs(a - b).max() < 0.05, (key, float(np.abs(a - b).max()))


def test_onnx_int8_answers_the_same_on_an_emulated_avx2_cpu(flowers_exports, flowers, tmp_path):
    _vnni_host_or_skip()
    if shutil.which("qemu-x86_64") is None:
        pytest.fail("qemu-x86_64 not found: this VNNI host needs it to check int8 on an AVX2 CPU; "
                    "install the Debian package qemu-user (`make test` does so when run as root)")
    artifact = Path(flowers_exports["onnx:int8"].path)
    images = _images(flowers, artifact, COUNT, tmp_path)
    native = _scores([], images, tmp_path / "native.npz", [artifact])
    avx2 = _scores(["qemu-x86_64", "-cpu", "Haswell-v4"], images, tmp_path / "avx2.npz", [artifact],
                   {"EDGECLS_CPU_FEATURES": "avx2"})
    _assert_same(native["a0"], avx2["a0"], "onnx:int8")


def test_openvino_int8_answers_the_same_with_onednn_capped_at_avx2(flowers_exports, flowers, tmp_path):
    _vnni_host_or_skip()
    artifact = Path(flowers_exports["openvino:int8"].path)
    images = _images(flowers, artifact, 100, tmp_path)  # native speed: many photos are cheap
    native = _scores([], images, tmp_path / "native.npz", [artifact])
    capped = _scores([], images, tmp_path / "capped.npz", [artifact], {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    _assert_same(native["a0"], capped["a0"], "openvino:int8")


ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""
X86_AVX2_CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""


@pytest.mark.parametrize("machine,text,features,cls", [
    ("aarch64", ARM_CPUINFO, ["neon", "dotprod"], "arm"),
    ("x86_64", X86_AVX2_CPUINFO, ["avx2"], "x86-avx2"),
    ("x86_64", X86_AVX2_CPUINFO.replace("bmi2", "bmi2 avx512f avx512_vnni"), ["avx2", "avx512", "vnni"], "x86-vnni"),
])
def test_cpu_features_from_cpuinfo(monkeypatch, machine, text, features, cls):
    from edgecls import cpu

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: text)
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.delenv("EDGECLS_CPU_FEATURES", raising=False)
    cpu.cpu_info.cache_clear()
    try:
        info = cpu.cpu_info()
    finally:
        cpu.cpu_info.cache_clear()
    assert info["features"] == features and info["class"] == cls


def test_bench_provenance_names_the_isa():
    from edgecls.bench import host_info

    info = host_info()
    assert info["cpu_features"] == cpu_info()["features"] and info["cpu_class"] == cpu_info()["class"]
