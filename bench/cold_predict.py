"""Cold start of `edgecls predict` for one photo against a plain cv2 + ai-edge-litert script.

Each run is a fresh process (what a user or a cron job on a device pays); the two are
interleaved, after one untimed run each to warm the file cache, and the medians compared
(wall time, and CPU time, which neighbours on a shared machine disturb less).
Goal (issue 11): edgecls <= 1.3x the plain script.

    python bench/cold_predict.py [--runs 5] [--assets ../shared]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PLAIN = r'''
import sys
import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

model, photo, labels = sys.argv[1:4]
interp = Interpreter(model_path=model)
interp.allocate_tensors()
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
h, w = inp["shape"][1:3]
bgr = cv2.imread(photo, cv2.IMREAD_COLOR)
rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
interp.set_tensor(inp["index"], rgb[None].astype(inp["dtype"]))
interp.invoke()
scores = interp.get_tensor(out["index"])[0]
scale, zero = out["quantization"]
names = open(labels).read().splitlines()
best = np.argsort(-scores)[:3]
print(photo + ": " + ", ".join(f"{names[i]} ({(scores[i] - zero) * scale:.3f})" for i in best))
'''


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("EDGECLS_ASSETS", root.parent / "shared")))
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    coral = args.assets / "models" / "coral"
    model, labels = coral / "mobilenet_v2_1.0_224_quant.tflite", coral / "imagenet_labels.txt"
    photo = args.assets / "images" / "imagenet-photos" / "parrot.jpg"
    if not model.is_file():
        sys.exit(f"shared assets not found under {args.assets}; pass --assets")
    script = Path(sys.executable).with_name("edgecls")
    edgecls = [str(script)] if script.exists() else [shutil.which("edgecls") or "edgecls"]
    commands = {
        "plain cv2 + ai-edge-litert": [sys.executable, "-c", PLAIN, str(model), str(photo), str(labels)],
        "edgecls predict": [*edgecls, "predict", str(model), str(photo), "--labels", str(labels)],
    }
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for cmd in commands.values():
        timed(cmd)  # file cache warm-up, not timed
    for _ in range(args.runs):
        for name, cmd in commands.items():
            w, c = timed(cmd)
            wall[name].append(w)
            cpu[name].append(c)
    for name in commands:
        print(f"{name:<28} wall median {statistics.median(wall[name]) * 1e3:6.0f} ms, CPU median "
              f"{statistics.median(cpu[name]) * 1e3:6.0f} ms  (wall runs: {', '.join(f'{t * 1e3:.0f}' for t in wall[name])})")
    plain, ours = "plain cv2 + ai-edge-litert", "edgecls predict"
    ratio = statistics.median(wall[ours]) / statistics.median(wall[plain])
    cpu_ratio = statistics.median(cpu[ours]) / statistics.median(cpu[plain])
    # CPU time is printed too: on a shared machine wall time also measures the neighbours.
    print(f"ratio edgecls / plain: wall {ratio:.2f}, CPU {cpu_ratio:.2f} (goal <= 1.30)")

if __name__ == "__main__":
    main()
