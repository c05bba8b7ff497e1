"""Load and live-view figures of `edgecls serve` on loopback, against the bare engine.

1. The bare engine's rate: one thread decoding the JPEG, preparing it and running the engine, in a
   loop (decode included, as in the server).
2. Resident memory: a process that only opened the engine and ran it, vs an idle server (no
   source) after one request.
3. POST /classify at concurrency 1, 4 and 16 (aiohttp client, a bounded number of requests per
   level): requests/s, p50/p99 latency, 503s (the queue admits --queue-size requests, default 8).
4. A second server streaming a generated video (unpaced: as fast as the pipeline goes): frames/s
   over fixed windows with 0, 1 and 4 viewers, for each transport (WebSocket, MJPEG), with the
   viewers' own frame rate, the age of the frames they receive and the server's CPU use.
5. Optionally a screenshot of the page (headless Chromium) for the README.

    python bench/serve_load.py --out bench/results/serve_load.md --screenshot bench/results/serve_live.png
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serve_util import Server, coral_manifest  # noqa: E402

PHOTOS = ["parrot.jpg", "cat.bmp", "grace_hopper.bmp", "hot_dog.jpg", "bird.bmp", "dragonfly.bmp"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_engine(artifact: Path, jpeg: bytes, n: int) -> dict:
    """Engine-bound rate and RSS, in a fresh process that holds only the runtime and the engine."""
    code = f"""
import json, time, sys
from edgecls.runtime import Classifier
from edgecls.preprocess import decode_rgb
clf = Classifier.from_artifact({str(artifact)!r})
data = open({str(PHOTO)!r}, 'rb').read()
for _ in range(10):
    clf.scores_from_inputs(clf.prepare(decode_rgb(data))[None])
times = []
cpu = time.process_time()
start = time.perf_counter()
for _ in range({n}):
    t = time.perf_counter()
    clf.scores_from_inputs(clf.prepare(decode_rgb(data))[None])
    times.append((time.perf_counter() - t) * 1e3)
rate = {n} / (time.perf_counter() - start)
cpu_ms = (time.process_time() - cpu) / {n} * 1e3
times.sort()
rss = [int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmRSS:')][0]
print(json.dumps({{"rate": rate, "cpu_ms": cpu_ms, "rss_mb": rss, "p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def load(port: int, token: str, body: bytes, concurrency: int, total: int, pid: int) -> dict:
    import aiohttp

    latencies, statuses = [], []

    async def client(session):
        while len(statuses) < total:
            statuses.append(None)
            t = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/classify", data=body,
                                    headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}) as r:
                await r.read()
                statuses[statuses.index(None)] = r.status
                if r.status == 200:
                    latencies.append((time.perf_counter() - t) * 1e3)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"concurrency": concurrency, "requests": total, "ok": statuses.count(200), "rejected": statuses.count(503),
            "rps": statuses.count(200) / seconds, "p50_ms": q[49], "p99_ms": q[98], "cpu_ms": cpu / total * 1e3}


def processed(server: Server) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, _, body = server.request("GET", "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "edgecls_stream_frames":
            return next(s.value for s in family.samples if s.labels["state"] == "processed")
    return 0.0


async def viewer(port: int, token: str, transport: str, stop: asyncio.Event, seen: list) -> None:
    """A viewer that takes frames as fast as they come; records (receive time, frame age s)."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        if transport == "websocket":
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                while not stop.is_set():
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        sent = json.loads(msg.data)["time"]
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        seen.append((time.time(), time.time() - sent))
                    else:
                        return
        else:
            async with session.get(f"http://127.0.0.1:{port}/stream.mjpg") as r:
                buffer = b""
                while not stop.is_set():
                    buffer += await r.content.read(1 << 16)
                    while (head_end := buffer.find(b"\r\n\r\n")) >= 0:
                        head = buffer[:head_end].decode("latin-1")
                        length = int(head.split("Content-Length: ")[1].split("\r\n")[0])
                        if len(buffer) < head_end + 4 + length + 2:
                            break
                        sent = float(head.split("X-Time: ")[1].split("\r\n")[0])
                        seen.append((time.time(), time.time() - sent))
                        buffer = buffer[head_end + 4 + length + 2 :]


async def stream_window(server: Server, transport: str, viewers: int, seconds: float) -> dict:
    stop, seen = asyncio.Event(), [[] for _ in range(viewers)]
    tasks = [asyncio.create_task(viewer(server.port, server.token, transport, stop, seen[i])) for i in range(viewers)]
    await asyncio.sleep(2.0)  # viewers connected, encoding under way
    frames0, cpu0, t0 = processed(server), cpu_seconds(server.proc.pid), time.perf_counter()
    await asyncio.sleep(seconds)
    frames1, cpu1, t1 = processed(server), cpu_seconds(server.proc.pid), time.perf_counter()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    got = [[age for when, age in s if when >= time.time() - seconds - 0.5] for s in seen]
    return {"transport": transport if viewers else "-", "viewers": viewers, "fps": (frames1 - frames0) / (t1 - t0),
            "per_cpu_s": (frames1 - frames0) / max(cpu1 - cpu0, 1e-6),
            "cpu": (cpu1 - cpu0) / (t1 - t0),
            "viewer_fps": statistics.mean(len(g) for g in got) / seconds if viewers else None,
            "age_ms": statistics.median([a for g in got for a in g]) * 1e3 if viewers and any(got) else None}


def make_video(path: Path, assets: Path, frames_each: int = 10) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for name in PHOTOS:
        bgr = cv2.resize(cv2.imread(str(assets / "images/imagenet-photos" / name)), (640, 480))
        for _ in range(frames_each):
            writer.write(bgr)
    writer.release()
    return path


def screenshot(server: Server, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", viewport={"width": 960, "height": 560},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/#token={server.token}")
        page.wait_for_selector("#labels .row", timeout=15000)
        time.sleep(4)
        page.screenshot(path=str(path))
        browser.close()


PHOTO = Path()
LOAD_BEFORE = ""


def show(row: dict) -> None:
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def measure_api(artifact: Path, work: Path, body: bytes, requests: int) -> tuple[float, float, list]:
    """Idle RSS, RSS after the load, and one row per concurrency level, for a server without a source."""
    api = Server(artifact, "--state-dir", work / "state_api")
    try:
        api.request("POST", "/classify", body, headers={"Content-Type": "image/jpeg"})
        time.sleep(1.0)
        idle_rss = rss_mb(api.proc.pid)
        print(f"server idle RSS {idle_rss:.0f} MB", flush=True)
        levels = []
        for c in (1, 4, 16):
            levels.append(asyncio.run(load(api.port, api.token, body, c, requests, api.proc.pid)))
            show(levels[-1])
        return idle_rss, rss_mb(api.proc.pid), levels
    finally:
        api.stop()


def measure_stream(artifact: Path, work: Path, assets: Path, rounds: int, window: float) -> list:
    """Stream windows with 0, 1 and 4 viewers per transport, interleaved and repeated: the host's
    other load drifts, and a ratio of neighbours is steadier."""
    streamer = Server(artifact, make_video(work / "photos.avi", assets), "--fps", "0",
                      "--state-dir", work / "state_stream")
    windows = []
    try:
        streamer.wait_ready(True)
        time.sleep(2)
        for _ in range(rounds):
            for transport, viewers in (("-", 0), ("websocket", 1), ("websocket", 4), ("mjpeg", 1), ("mjpeg", 4)):
                windows.append(asyncio.run(stream_window(streamer, transport, viewers, window)))
                show(windows[-1])
    finally:
        streamer.stop()
    return windows


def take_screenshot(artifact: Path, work: Path, assets: Path, path: Path) -> None:
    """The page over a folder of the photos at 2 fps, as the README shows it."""
    photos = work / "photos"
    photos.mkdir()
    for name in PHOTOS:
        (photos / name).write_bytes((assets / "images/imagenet-photos" / name).read_bytes())
    shown = Server(artifact, photos, "--fps", "2", "--state-dir", work / "state_shot", "-k", "3")
    try:
        shown.wait_ready(True)
        screenshot(shown, path)
    finally:
        shown.stop()


def main() -> None:
    global PHOTO, LOAD_BEFORE
    LOAD_BEFORE = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared")))
    ap.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    ap.add_argument("--window", type=float, default=6.0, help="seconds per stream measurement")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the five stream settings")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    PHOTO = args.assets / "images/imagenet-photos/parrot.jpg"
    coral = args.assets / "models/coral"
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        work = Path(tmp)
        artifact = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite",
                                  (coral / "imagenet_labels.txt").read_text().splitlines(), work / "model")
        body = PHOTO.read_bytes()
        engine = bare_engine(artifact, body, args.requests)
        print(f"bare engine: {engine['rate']:.1f} images/s (decode + prepare + infer), p50 {engine['p50_ms']:.1f} ms, "
              f"p99 {engine['p99_ms']:.1f} ms, RSS {engine['rss_mb']:.0f} MB", flush=True)
        idle_rss, loaded_rss, levels = measure_api(artifact, work, body, args.requests)
        windows = measure_stream(artifact, work, args.assets, args.rounds, args.window)
        if args.screenshot:
            take_screenshot(artifact, work, args.assets, args.screenshot)
    report(args, engine, idle_rss, loaded_rss, levels, windows)


def median_windows(windows: list) -> list:
    """One row per (transport, viewers): medians over the rounds."""
    rows = []
    for key in dict.fromkeys((w["transport"], w["viewers"]) for w in windows):
        same = [w for w in windows if (w["transport"], w["viewers"]) == key]
        row = {"transport": key[0], "viewers": key[1], "rounds": len(same)}
        for field in ("fps", "per_cpu_s", "cpu", "viewer_fps", "age_ms"):
            values = [w[field] for w in same if w[field] is not None]
            row[field] = statistics.median(values) if values else None
        rows.append(row)
    return rows


def report(args, engine: dict, idle_rss: float, loaded_rss: float, levels: list, windows: list) -> None:
    rows = median_windows(windows)
    base = next(r["fps"] for r in rows if r["viewers"] == 0)
    c1 = next(x for x in levels if x["concurrency"] == 1)
    c4 = next(x for x in levels if x["concurrency"] == 4)
    worst4 = min(r["fps"] for r in rows if r["viewers"] == 4)
    base_eff = next(r["per_cpu_s"] for r in rows if r["viewers"] == 0)
    worst4_eff = min(r["per_cpu_s"] for r in rows if r["viewers"] == 4)
    goals = [("/classify throughput at c=4 >= 0.8 x bare engine", c4["rps"] / engine["rate"], 0.8, ">="),
             ("p99 / p50 at c=1 <= 1.5 (the bare engine's own: "
              f"{engine['p99_ms'] / engine['p50_ms']:.2f})", c1["p99_ms"] / c1["p50_ms"], 1.5, "<="),
             ("stream fps with 4 viewers / with none >= 0.95 (worse transport, medians)", worst4 / base, 0.95, ">="),
             ("same, as frames per server CPU-second (contention-proof, conservative)", worst4_eff / base_eff, 0.95, ">="),
             ("idle server RSS - engine-alone RSS <= 150 MB", idle_rss - engine["rss_mb"], 150, "<=")]
    lines = ["# `edgecls serve` under load (loopback, this host)", "",
             "`python " + " ".join(sys.argv) + "`", "",
             "Model: Coral MobileNetV2 1.0 224 uint8 (LiteRT, default threads), request body parrot.jpg "
             f"({len(PHOTO.read_bytes()) // 1024} KB JPEG); {os.cpu_count()} CPUs; load average before the run "
             f"{LOAD_BEFORE}.", "",
             f"- bare engine (one thread: decode + prepare + infer): **{engine['rate']:.1f} images/s**, "
             f"p50 {engine['p50_ms']:.1f} ms, p99 {engine['p99_ms']:.1f} ms, {engine['cpu_ms']:.1f} ms of CPU per image, "
             f"RSS {engine['rss_mb']:.0f} MB",
             f"- server idle (no source, after one request): RSS **{idle_rss:.0f} MB**; after the load {loaded_rss:.0f} MB", "",
             "| concurrency | requests | 200 | 503 | requests/s | x engine | p50 ms | p99 ms | server CPU ms per request |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in levels:
        lines.append(f"| {x['concurrency']} | {x['requests']} | {x['ok']} | {x['rejected']} | {x['rps']:.1f} | "
                     f"{x['rps'] / engine['rate']:.2f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['cpu_ms']:.1f} |")
    lines += ["", f"Stream: a 640x480 video played unpaced (every frame classified); medians of {args.rounds} interleaved "
              f"rounds of {args.window:g} s windows.", "",
              "| transport | viewers | stream fps | x none | frames per CPU-s | x none | viewer fps | frame age at viewer ms "
              "| server CPU (cores) |", "|---|---|---|---|---|---|---|---|---|"]
    for w in rows:
        viewer_fps = "" if w["viewer_fps"] is None else f"{w['viewer_fps']:.1f}"
        age = "" if w["age_ms"] is None else f"{w['age_ms']:.1f}"
        lines.append(f"| {w['transport']} | {w['viewers']} | {w['fps']:.1f} | {w['fps'] / base:.2f} | "
                     f"{w['per_cpu_s']:.0f} | {w['per_cpu_s'] / base_eff:.2f} | {viewer_fps} | {age} | {w['cpu']:.2f} |")
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for text, value, limit, op in goals:
        met = value >= limit if op == ">=" else value <= limit
        lines.append(f"| {text} | {value:.2f} | {'yes' if met else '**no**'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
