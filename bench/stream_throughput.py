"""Stream throughput against the slowest stage, and a memory soak.

1. Times each stage alone on the Coral MobileNetV2 (LiteRT) for each engine thread count
   (default 1 and 2): decoding a frame from a video file, preprocessing it (goal <= 1 ms per
   640x480 frame), inference.
2. Streams the same video through `edgecls.stream.Stream` (a file: every frame processed) and
   prints frames/s against 1 / (slowest stage) and against the all-cores bound: the goal is >= 0.9.
3. Soaks 10,000 frames from an endless in-memory live source and prints resident memory after
   the first 1,000 frames and at the end: the goal is < 5% growth.

    python bench/stream_throughput.py [--frames 300] [--soak 10000] [--threads 1,2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    import cv2

    from edgecls.runtime import Classifier
    from edgecls.stream import OpenCVSource, Stream, StreamOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("EDGECLS_ASSETS", ROOT.parent / "shared")))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--soak", type=int, default=10000)
    parser.add_argument("--threads", default="1,2", help="engine thread counts, comma-separated")
    args = parser.parse_args()

    coral = args.assets / "models/coral"
    photos = sorted((args.assets / "images/imagenet-photos").glob("*.*"))
    frames = [cv2.resize(img, (640, 480)) for img in (cv2.imread(str(p)) for p in photos) if img is not None]
    video = Path(tempfile.mkdtemp()) / "stream.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for i in range(args.frames):
        writer.write(frames[i % len(frames)])
    writer.release()

    def per_call_ms(fn, n=100):
        """(wall ms, CPU ms of all this process's threads) per call."""
        fn()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) * 1e3 / n, (time.process_time() - c) * 1e3 / n

    cores = os.cpu_count() or 1
    for threads in (int(t) for t in args.threads.split(",")):
        clf = Classifier.from_artifact(coral / "mobilenet_v2_1.0_224_quant.tflite",
                                       labels=coral / "imagenet_labels.txt", num_threads=threads)
        cap = cv2.VideoCapture(str(video))
        decode_ms, decode_cpu = per_call_ms(lambda: cap.read(), 100)
        cap.release()
        rgb = frames[0][:, :, ::-1]
        pre_ms, pre_cpu = per_call_ms(lambda: clf.prepare(rgb), 300)
        x = clf.prepare(rgb)[None]
        infer_ms, infer_cpu = per_call_ms(lambda: clf.scores_from_inputs(x))
        slowest = max(decode_ms, pre_ms, infer_ms)
        cpu_bound = 1000 * cores / (decode_cpu + pre_cpu + infer_cpu)
        bound = min(1000 / slowest, cpu_bound)
        print(f"engine threads {threads}, {cores} cores; stage wall (CPU) ms: decode {decode_ms:.2f} ({decode_cpu:.2f}), "
              f"preprocess {pre_ms:.2f} ({pre_cpu:.2f}) per 640x480 frame (goal <= 1 ms), "
              f"inference {infer_ms:.2f} ({infer_cpu:.2f})")
        print(f"  bounds: 1/(slowest stage) {1000 / slowest:.1f} frames/s; all cores busy {cpu_bound:.1f} frames/s; "
              f"stages in series {1000 / (decode_ms + pre_ms + infer_ms):.1f} frames/s")
        summary = Stream(clf, OpenCVSource(str(video)), [], StreamOptions(stats_interval=0)).run()
        print(f"  stream: {summary['processed']} frames at {summary['fps']:.1f} frames/s = "
              f"{summary['fps'] / (1000 / slowest):.2f} of 1/(slowest stage), "
              f"{summary['fps'] / bound:.2f} of the tighter bound (goal >= 0.90); "
              f"capture-to-result p50 {summary['latency_ms']['p50']} ms")
    if args.soak <= 0:
        return 0

    class Endless:
        live, description = False, "in-memory frames"

        def __init__(self, n):
            self.n, self.i = n, 0

        def read(self):
            if self.i >= self.n:
                return False, None, ""
            self.i += 1
            return True, frames[self.i % len(frames)][:, :, ::-1], ""

        def reopen(self):
            return False

        def close(self):
            pass

    marks = {}

    def sink(frame, top):
        if frame.index >= 1000 and "early" not in marks:
            marks["early"] = rss_mb()

    soak = Stream(clf, Endless(args.soak), [sink], StreamOptions(stats_interval=0, retries=0))
    summary = soak.run()
    end = rss_mb()
    early = marks.get("early", end)
    print(f"soak: {summary['captured']} frames captured, {summary['processed']} processed, {summary['dropped']} dropped "
          f"at {summary['fps']:.1f} frames/s; RSS {early:.1f} MB after 1,000 frames, "
          f"{end:.1f} MB at the end: {100 * (end - early) / early:+.2f}% (goal < 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
