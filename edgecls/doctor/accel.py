"""Engines (importable, versions) and the Edge TPU delegate (library, accelerator present, answering)."""
from __future__ import annotations

import ctypes
import platform
from importlib import import_module
from pathlib import Path

from . import Finding, Request

# Engine -> the modules that provide it, first importable wins (LiteRT falls back to tflite-runtime).
ENGINE_MODULES = {"litert": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
                  "onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}
# USB ids of the Coral USB Accelerator: before its firmware is loaded, and after.
CORAL_USB_IDS = {("1a6e", "089a"): "Coral USB Accelerator (firmware not loaded yet)",
                 ("18d1", "9302"): "Coral USB Accelerator"}


def needed_engines(request: Request) -> dict[str, list[str]]:
    """Engine name -> the artifacts that need it."""
    from ..engines import engine_for
    from ..errors import ModelError

    needed: dict[str, list[str]] = {}
    for path in request.artifacts:
        try:
            needed.setdefault(engine_for(path).name, []).append(path.name)
        except ModelError:
            continue  # an unknown format is the artifact check's finding
    return needed


def _import_engine(name: str) -> tuple[str | None, str | None]:
    """(version, None) when the engine imports, else (None, the import error)."""
    from ..provenance import engine_versions

    errors = []
    for module in ENGINE_MODULES[name]:
        try:
            mod = import_module(module)
        except Exception as exc:  # a broken native library raises more than ImportError
            errors.append(f"{module}: {type(exc).__name__}: {exc}")
            continue
        top = import_module(module.split(".")[0])
        return engine_versions().get(name) or f"{module.split('.')[0]} {getattr(top, '__version__', '?')}", None
    return None, "; ".join(errors)


def check(request: Request) -> list[Finding]:
    """Engines and delegates."""
    return [*_engines(request), *_edgetpu(request)]


def _engines(request: Request) -> list[Finding]:
    from ..engines import ENGINES

    needed = needed_engines(request)
    findings, importable = [], []
    for name, spec in ENGINES.items():
        version, error = _import_engine(name)
        users = needed.get(name)
        if version:
            importable.append(name)
            findings.append(Finding("engines", name, "ok", version, data={"version": version}))
        elif users:
            findings.append(Finding("engines", name, "fail", f"not importable, needed by {', '.join(users)} ({error})",
                                    f"install it: pip install 'edgecls[{spec.extra}]' (on a device without network, "
                                    "deploy a bundle with `edgecls deploy`: it carries the engine's wheels)",
                                    {"error": error}))
        else:
            findings.append(Finding("engines", name, "info", f"not installed (needed only for "
                                    f"{', '.join(spec.suffixes)} artifacts)", data={"error": error}))
    if not request.artifacts and not importable:
        findings.append(Finding("engines", "any engine", "fail", "no inference engine is importable",
                                "install one: pip install 'edgecls[runtime]' (LiteRT for .tflite)"))
    return findings


def edgetpu_needed(request: Request) -> list[str]:
    """Why the Edge TPU delegate is needed: artifacts compiled for it, or a target that asks for it."""
    reasons = [p.name for p in request.artifacts if p.suffix == ".tflite" and p.is_file()
               and b"edgetpu-custom-op" in p.read_bytes()]
    if request.target and request.target.engines.get("litert", {}).get("delegate") == "edgetpu":
        reasons.append(f"target {request.target.name}")
    return reasons


def coral_devices() -> list[str]:
    """Edge TPUs this machine shows: PCIe/M.2 (/dev/apex_N) and USB accelerators."""
    found = [str(p) for p in sorted(Path("/dev").glob("apex_*"))]
    for dev in sorted(Path("/sys/bus/usb/devices").glob("*")):
        try:
            ids = ((dev / "idVendor").read_text().strip(), (dev / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in CORAL_USB_IDS:
            found.append(f"{CORAL_USB_IDS[ids]} (USB {dev.name})")
    return found


def _edgetpu(request: Request) -> list[Finding]:
    from ..engines.litert import EDGETPU_LIBRARY

    lib = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    needed = edgetpu_needed(request)
    devices = coral_devices()
    try:
        ctypes.CDLL(lib)
    except OSError as exc:
        if needed:
            return [Finding("delegates", "edgetpu", "fail", f"{lib} not found ({exc}); needed by {', '.join(needed)}",
                            "install the Edge TPU runtime: add Coral's apt repository "
                            "(https://coral.ai/software/#edgetpu-runtime) and `sudo apt install libedgetpu1-std`; "
                            "or deploy the CPU build of the model", {"library": lib})]
        return [Finding("delegates", "edgetpu", "info", f"{lib} not installed (needed only for Edge TPU models)",
                        data={"library": lib, "devices": devices})]
    if not devices and not needed:
        return [Finding("delegates", "edgetpu", "info", f"{lib} loads; no Edge TPU attached", data={"devices": devices})]
    answer = _delegate_answers(lib)
    status = "ok" if answer is None else ("fail" if needed else "warn")
    detail = f"{lib} loads; {', '.join(devices) or 'no Edge TPU seen on USB or PCIe'}; " + (
        "the accelerator answers" if answer is None else f"the delegate does not start ({answer})")
    fix = "" if answer is None else ("plug the accelerator into a USB 3 port (blue) and check `lsusb`; if it is "
                                     "there, another process holds it: stop the other edgecls service or program "
                                     "(only one process can use an Edge TPU), then run the doctor again")
    return [Finding("delegates", "edgetpu", status, detail, fix, {"devices": devices, "error": answer})]


def _delegate_answers(lib: str) -> str | None:
    """None when LiteRT starts the Edge TPU delegate (it opens the device), else why not."""
    try:
        from ..engines.litert import interpreter_module

        mod, _ = interpreter_module()
        mod.load_delegate(lib)
    except Exception as exc:  # the delegate loader raises ValueError, the engine import EdgeclsError
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None

