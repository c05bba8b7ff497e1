"""The loop from camera to model, timed on this host (issue 26), and a fleet push.

1. A device with no model: `edgecls serve --collect DIR CAMERA`, the camera an image folder of real
   photos at 10 frames/s (flowers-small: daisies, then the camera is turned to sunflowers). 100
   frames of each class are saved through the page's route (two bursts of 50 per class, 0.1 s
   apart), then `edgecls pull`, `edgecls train` (MobileNetV2 from the shared ImageNet weights,
   feature head, a fixed test split), `edgecls export` (TFLite int8 and fp32), and the device is
   restarted on the int8 model with --learn and --collect: "fixed model serving". Every step's wall time.
2. Ten `edgecls serve` processes on loopback serving the int8 model; `edgecls push` of the fp32
   artifact to all ten (canary, then waves of 3), timed; then a bad artifact (a stored check image
   whose recorded answer is wrong), which must stop at the canary with nothing else changed.
3. Screenshots of the collect panel and the label page (headless Chromium) for the README.

    python bench/loop_bench.py --out bench/results/loop_bench.md \
        --screenshots bench/results/loop_collect.png bench/results/loop_label.png
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serve_util import TOKEN, Server  # noqa: E402

ASSETS = Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared"))
CLASSES = ("daisy", "sunflowers")


def edgecls(*args, timeout: int = 1200) -> tuple[float, str]:
    env = {**os.environ, "EDGECLS_TOKEN": TOKEN, "COLUMNS": "160"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgecls.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"edgecls {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def camera(work: Path) -> Path:
    """Two folders of the same file names (one per class) and a link that says where the camera looks."""
    for name in CLASSES:
        folder = work / "scenes" / name
        folder.mkdir(parents=True)
        for i, photo in enumerate(sorted((ASSETS / "data/flowers-small" / name).glob("*.jpg"))):
            shutil.copyfile(photo, folder / f"{i:04d}.jpg")
    link = work / "camera"
    link.symlink_to(work / "scenes" / CLASSES[0], target_is_directory=True)
    return link


def point(link: Path, name: str) -> None:
    tmp = link.with_name("camera.new")
    tmp.symlink_to(link.parent / "scenes" / name, target_is_directory=True)
    os.replace(tmp, link)


def collect(device: Server, link: Path, per_class: int) -> float:
    start = time.perf_counter()
    for name in CLASSES:
        point(link, name)
        time.sleep(0.5)  # the frames already read from the other folder go by
        saved = 0
        while saved < per_class:
            status, doc = device.json("POST", "/api/collect",
                                      {"class": name, "count": min(50, per_class - saved), "interval": 0.1})
            if status != 200:
                raise SystemExit(f"collect: {doc}")
            saved += len(doc["saved"])
    return time.perf_counter() - start


class Rows(list):
    """Steps and their wall time, each printed as it ends (a failure later keeps what was measured)."""

    def append(self, row) -> None:
        print(f"{row[0]}: {row[1]:.1f} s", flush=True)
        super().append(row)


def first_loop(work: Path, rows: list, per_class: int) -> tuple:
    link = camera(work)
    start = time.perf_counter()
    device = Server(link, "--fps", "10", "--collect", work / "device", "--state-dir", work / "s0")
    rows.append(("start the device (no model, --collect)", time.perf_counter() - start))
    try:
        rows.append((f"collect {per_class} frames of each of 2 classes (bursts)", collect(device, link, per_class)))
        seconds, out = edgecls("pull", f"http://127.0.0.1:{device.port}", "--out", work / "dataset")
        rows.append((f"pull ({out.splitlines()[0].split(': ', 1)[-1]})", seconds))
    finally:
        device.stop()
    weights = ASSETS / "models/keras/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
    seconds, _ = edgecls("train", work / "dataset", "--out", work / "r1", "--weights", weights, "--test-fraction", "0.2")
    rows.append(("train (MobileNetV2, feature head, 224 px)", seconds))
    seconds, _ = edgecls("export", work / "r1/model.keras", "--format", "tflite", "--quant", "int8,fp32")
    rows.append(("export (TFLite int8 and fp32, verified)", seconds))
    int8, fp32 = (next((work / "r1/export").glob(f"*{q}*.tflite")) for q in ("int8", "fp32"))
    start = time.perf_counter()
    device = Server(int8, link, "--fps", "10", "--collect", work / "device", "--learn", work / "unsure",
                    "--learn-margin", "1.0", "--learn-per-minute", "30", "--state-dir", work / "s1")
    device.wait_ready(True)
    rows.append(("the device serves the model (restart, ready)", time.perf_counter() - start))
    return int8, fp32, device, link


def fleet(int8: Path, fp32: Path, work: Path, count: int) -> dict:
    servers = [Server(int8, "--state-dir", work / f"fleet{i}", "--name", "m") for i in range(count)]
    try:
        urls = [f"http://127.0.0.1:{s.port}" for s in servers]
        seconds, out = edgecls("push", fp32, *urls, "--wave", "3")
        good = {"seconds": seconds, "updated": out.count("updated"), "out": out}
        bad_dir = work / "bad"
        shutil.copytree(fp32.parent, bad_dir)
        manifest = bad_dir / (fp32.name + ".json")
        doc = json.loads(manifest.read_text())
        doc["checks"][0]["top1"] = next(c for c in CLASSES if c != doc["checks"][0]["top1"])
        manifest.write_text(json.dumps(doc))
        int8_sha = json.loads(Path(str(int8) + ".json").read_text())["artifact_sha256"]
        for s in servers:  # back to the int8 model everywhere, then the bad fp32 copy
            s.json("POST", "/v2/models/m/rollback", {})
        before = [s.json("GET", "/api/status")[1]["model"]["sha256"] for s in servers]
        seconds_bad, out_bad = edgecls("push", bad_dir / fp32.name, *urls, "--wave", "3")
        after = [s.json("GET", "/api/status")[1]["model"]["sha256"] for s in servers]
        table = [line for line in out_bad.splitlines() if "127.0.0.1" in line and "│" in line]
        return {**good, "bad_seconds": seconds_bad, "bad_out": out_bad, "unchanged": before == after,
                "all_int8_before": before == [int8_sha] * count, "not_tried": out_bad.count("not tried"),
                "canary_refused": bool(table) and "refused" in table[0]}
    finally:
        for s in servers:
            s.stop()


def screenshots(device: Server, collect_png: Path, label_png: Path) -> None:
    from playwright.sync_api import sync_playwright

    deadline = time.time() + 60
    while device.json("GET", "/api/label?kind=kept&limit=1")[1]["total"] < 8 and time.time() < deadline:
        time.sleep(0.5)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1180, "height": 720})
        page.goto(f"http://127.0.0.1:{device.port}/#token={TOKEN}")
        page.wait_for_selector("#collect:not([hidden])", timeout=20000)
        page.click("#collect-classes button >> nth=0")
        time.sleep(2)
        page.screenshot(path=str(collect_png))
        page.goto(f"http://127.0.0.1:{device.port}/?view=label#token={TOKEN}")
        deadline = time.time() + 60  # every thumbnail of the page shown (a loaded host answers slowly)
        while time.time() < deadline and not page.evaluate(
                "() => { const i = [...document.querySelectorAll('.card img')]; "
                "return i.length > 0 && i.every((x) => x.complete && x.naturalWidth > 0); }"):
            time.sleep(0.5)
        page.keyboard.press(" ")
        page.keyboard.press("ArrowRight")
        page.keyboard.press(" ")
        page.keyboard.press("ArrowRight")
        page.screenshot(path=str(label_png))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/loop_bench.md")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--fleet", type=int, default=10)
    parser.add_argument("--screenshots", type=Path, nargs=2, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgecls-loop-") as tmp:
        work, rows = Path(tmp), Rows()
        start = time.perf_counter()
        int8, fp32, device, link = first_loop(work, rows, args.per_class)
        loop_seconds = time.perf_counter() - start
        try:
            if args.screenshots:
                screenshots(device, *args.screenshots)
        finally:
            device.stop()
        push = fleet(int8, fp32, work, args.fleet)
        report(args, rows, loop_seconds, push, json.loads((work / "r1/metrics.json").read_text()))


def report(args, rows: list, loop_seconds: float, push: dict, metrics: dict) -> None:
    lines = ["# The loop from camera to model, and a fleet push", "",
             f"`python bench/loop_bench.py` on this host ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}.", "",
             "| step | wall s |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in rows]
    lines += [f"| **the loop, collect to the fixed model serving** | **{loop_seconds:.1f}** (goal ≤ 600) |", "",
              f"Validation accuracy of the round's model: {metrics['val']['accuracy']:.3f} "
              f"({metrics['val']['count']} photos). Not an accuracy figure: the camera here is a folder of 40 photos "
              "per class replayed, so the 100 frames of a class repeat those photos and the validation frames have "
              "twins in training. The bench measures the loop's time, not the model.", "",
              "| fleet push | measured | goal |", "|---|---|---|",
              f"| the fp32 artifact to {args.fleet} servers (canary, waves of 3) | {push['seconds']:.1f} s, "
              f"{push['updated']} updated | ≤ 30 s |",
              f"| a bad artifact (a check image's recorded answer wrong) | {push['bad_seconds']:.1f} s; canary refused: "
              f"{push['canary_refused']}; not tried: {push['not_tried']}; every server unchanged: {push['unchanged']} | "
              "stops at the canary, nothing else changed |", "", "Push output (good):", "", "```",
              push["out"].strip(), "```", "", "Push output (bad):", "", "```", push["bad_out"].strip(), "```"]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
