"""Denial-of-service attempts against `edgecls serve`, as an attacker on the LAN would try them
(issue 25), on 127.0.0.1 only, bounded in time (under 2 minutes) and in requests.

A server is started as a systemd service would run it: `ulimit -n 1024`, a token, the default
limits except --header-timeout 4 and --read-timeout 4 (so the deadlines show within the run).
Each attack runs while the server's descriptors and RSS are sampled (psutil, every 20 ms) and an
authorized client on another address (127.0.0.1; the attackers use 127.0.0.2-.41) asks
/v2/health/ready and POST /classify with a real photo. The table says what was tried, whether it
held (and what it is then bounded by), and the limits measured. The last attack sends SIGTERM.

    python bench/serve_attack.py --out bench/results/serve_attack.md
    # the figures of another checkout (e.g. before a fix), with its own server options:
    python bench/serve_attack.py --cwd /tmp/old-checkout --server-args "--read-timeout 4"
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serve_util import TOKEN, Server, coral_manifest  # noqa: E402

OPEN_FILES = 1024
DEADLINE = 4.0                     # --header-timeout and --read-timeout of the server under attack
BUDGET = 110.0                     # seconds for all attacks; the rest are skipped past it
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 42)]


class Watch:
    """Samples the server's descriptors and RSS; `phase()` gives the peaks over a block."""

    def __init__(self, pid: int):
        import psutil

        self.proc, self.fds, self.rss = psutil.Process(pid), 0, 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self.fds, self.rss = max(self.fds, self.proc.num_fds()), max(self.rss, self.proc.memory_info().rss)
            except Exception:  # noqa: BLE001 - the server exited (the SIGTERM attack)
                return
            time.sleep(0.02)

    @contextmanager
    def phase(self, into: dict):
        base = self.proc.memory_info().rss
        self.fds, self.rss = self.proc.num_fds(), base
        yield
        into.update(fds_peak=self.fds, rss_growth_mb=round((self.rss - base) / 2**20))


class Probe:
    """An authorized client: how long /v2/health/ready and /classify take to answer."""

    def __init__(self, server: Server, photo: bytes):
        self.server, self.photo = server, photo

    def __call__(self) -> str:
        out = []
        for method, path, body, headers in (("GET", "/v2/health/ready", None, {}),
                                            ("POST", "/classify", self.photo, {"Content-Type": "image/jpeg"})):
            start = time.perf_counter()
            try:
                status = self.server.request(method, path, body, headers=headers, timeout=10)[0]
                out.append(f"{status} in {time.perf_counter() - start:.2f} s")
            except OSError as exc:
                out.append(f"{type(exc).__name__} after {time.perf_counter() - start:.1f} s")
        return "ready " + out[0] + ", classify " + out[1]


def connect(port: int, source: str = "127.0.0.2", first: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    if first:
        sock.sendall(first)
    return sock


def still_open(socks: list[socket.socket]) -> int:
    """Sockets the server has not closed (no EOF, no reset, nothing left to read but silence)."""
    count = 0
    for s in socks:
        s.setblocking(False)
        try:
            while s.recv(65536):
                pass
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def answer(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"content-length" not in data.lower():
                break
            head, _, body = data.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
            if length and len(body) >= length[0]:
                break
    except OSError:
        pass
    return data


def status_of(data: bytes) -> int:
    return int(data.split()[1]) if data.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


AUTH = f"Authorization: Bearer {TOKEN}\r\n"


# --- the attacks: each returns (what was tried, held?, what was measured) -----------------------
def idle_connections(ctx) -> tuple[str, bool, str]:
    socks = [connect(ctx.port, ATTACKERS[i % 40], b"GET / HTTP/1.1\r\nHost: x\r\n") for i in range(1100)]
    ctx.wait(0.5)
    probe = ctx.probe()
    ctx.wait(DEADLINE + 1.5)
    left = still_open(socks)
    for s in socks:
        s.close()
    ok = "200 in" in probe and probe.count(" in ") == 2 and left == 0 and ctx.watch.fds < OPEN_FILES
    return ("1,100 connections (40 addresses) send half a request head and stop", ok,
            f"{probe}; {left} still open {DEADLINE + 1.5:g} s later")


def slowloris_headers(ctx) -> tuple[str, bool, str]:
    socks = [connect(ctx.port, ATTACKERS[8 + i % 8], b"GET / HTTP/1.1\r\nHost: x\r\n") for i in range(200)]
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE + 2:
        for s in socks:
            try:
                s.sendall(b"X-a: b\r\n")
            except OSError:
                pass
        time.sleep(0.5)
    left = still_open(socks)
    for s in socks:
        s.close()
    return ("200 connections send a header line every 0.5 s", left == 0,
            f"{200 - left} closed by the header deadline within {DEADLINE + 2:g} s")


def one_address(ctx) -> tuple[str, bool, str]:
    socks = [connect(ctx.port, "127.0.0.99", b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(100)]
    ctx.wait(0.5)
    refused = sum(1 for s in socks if select.select([s], [], [], 0)[0] and status_of(s.recv(4096)) == 503)
    for s in socks:
        s.close()
    return ("100 idle connections from one address", refused == 36, f"{refused} answered 503 at once (64 per address)")


def slow_bodies(ctx, token: bool) -> tuple[str, bool, str]:
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\n{AUTH if token else ''}Content-Type: image/jpeg\r\n"
            f"Content-Length: 1000000\r\n\r\n").encode()
    socks = [connect(ctx.port, ATTACKERS[16 + i % 8], head + b"\xff\xd8") for i in range(16 if token else 50)]
    start = time.monotonic()
    probe = ctx.probe()
    answers = [status_of(answer(s, DEADLINE + 3)) for s in socks]
    seconds = time.monotonic() - start
    for s in socks:
        s.close()
    want = 408 if token else 401
    who = "16 authorized" if token else "50 anonymous"
    return (f"{who} /classify bodies announced as 1 MB, 2 bytes sent", answers.count(want) == len(answers),
            f"{answers.count(want)} answered {want} within {seconds:.1f} s; meanwhile {probe}")


def pixel_bombs(ctx) -> tuple[str, bool, str]:
    import cv2

    ramp = (np.arange(5000) % 256).astype(np.uint8)
    picture = np.empty((5000, 5000, 3), np.uint8)
    picture[..., 0], picture[..., 1], picture[..., 2] = ramp[None, :], ramp[:, None], ramp[None, :] + ramp[:, None]
    jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 30])[1].tobytes()
    del picture
    binary = b"".join(len(jpeg).to_bytes(4, "little") + jpeg for _ in range(4))
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [4],
                                   "parameters": {"binary_data_size": len(binary)}}]}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: ctx.server.request("POST", "/v2/models/model/infer", head + binary,
                                                              headers=headers, timeout=90)[0], range(4)))
    growth = (ctx.watch.rss - ctx.base_rss) / 2**20
    return ("4 /infer requests at once, each 4 JPEGs of 5000x5000 (= --max-pixels), 1 MB each",
            statuses.count(200) == 4 and growth < 400, f"{statuses.count(200)}/4 answered 200")


def big_json_bodies(ctx) -> tuple[str, bool, str]:
    body = b'{"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 224, 224, 3], "data": [' \
        + b"0," * (9 << 20) + b"0]}]}"
    with ThreadPoolExecutor(17) as pool:
        sent = [pool.submit(_status, ctx, "POST", "/v2/models/model/infer", body, {"Content-Type": "application/json"})
                for _ in range(16)]
        time.sleep(0.5)
        probe = ctx.probe()
        statuses = [f.result() for f in sent]
    growth = (ctx.watch.rss - ctx.base_rss) / 2**20
    return (f"16 /infer bodies at once, each {len(body) >> 20} MB of JSON numbers (under --max-upload-mb 20)",
            growth < 1000, f"answers {', '.join(f'{statuses.count(c)} x {c}' for c in sorted(set(statuses)))}; "
                           f"meanwhile {probe}")


def many_parts(ctx) -> tuple[str, bool, str]:
    boundary = "b" * 16
    junk = f"--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n".encode() * 100_000
    body = junk + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    with ThreadPoolExecutor(2) as pool:
        start = time.monotonic()
        form = pool.submit(_status, ctx, "POST", "/classify", body, headers)
        upload = pool.submit(_status, ctx, "PUT", "/v2/models/model/artifact", body.replace(b'name="x"', b'name="check"'),
                             headers)
        time.sleep(0.2)
        probe = ctx.probe()
        statuses = form.result(), upload.result()
    return (f"multipart bodies of 100,000 parts ({len(body) >> 20} MB) to /classify and to the model upload",
            statuses == (400, 400) and probe.count("200 in 0") == 2,
            f"/classify {statuses[0]}, upload {statuses[1]} within {time.monotonic() - start:.1f} s; meanwhile {probe}")


def many_images(ctx) -> tuple[str, bool, str]:
    binary = b"\0\0\0\0" * (4 << 20)  # 4 million empty BYTES elements: 16 MB
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [4 << 20],
                                   "parameters": {"binary_data_size": len(binary)}}]}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    with ThreadPoolExecutor(2) as pool:
        sent = pool.submit(_status, ctx, "POST", "/v2/models/model/infer", head + binary, headers)
        time.sleep(0.3)
        probe = ctx.probe()
        status = sent.result()
    return ("/infer with 4 million empty binary BYTES elements (16 MB)", status == 400 and probe.count("200 in 0") == 2,
            f"answered {status}; meanwhile {probe}")


def big_heads(ctx) -> tuple[str, bool, str]:
    out = []
    for name, head in (("64 KB header", b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-a: " + b"a" * 65536 + b"\r\n\r\n"),
                       ("1,000 headers", b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 1000 + b"\r\n"),
                       ("100 KB request line", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")):
        with connect(ctx.port, ATTACKERS[24]) as s:
            try:
                s.sendall(head)
            except OSError:
                pass
            out.append((name, status_of(answer(s, 5))))
    return ("oversized request line and headers", all(400 <= st < 500 for _, st in out),
            ", ".join(f"{n}: {st}" for n, st in out))


def server_side(ctx, address: str) -> int:
    """Connections the server still holds from `address` (its own view: the client never reads)."""
    try:
        held = ctx.watch.proc.net_connections()
    except AttributeError:  # psutil < 6
        held = ctx.watch.proc.connections()
    return sum(1 for c in held if c.raddr and c.raddr.ip == address)


def pipelining(ctx) -> tuple[str, bool, str]:
    address = ATTACKERS[25]
    socks = [connect(ctx.port, address) for _ in range(3)]
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    for s in socks:
        s.setblocking(False)
        try:
            for _ in range(50):  # 5,000 requests, or as many as the buffers take
                s.send(request * 100)
        except BlockingIOError:
            pass
    probe, start = ctx.probe(), time.monotonic()
    while server_side(ctx, address) and time.monotonic() - start < 30:
        time.sleep(0.2)
    seconds = time.monotonic() - start
    for s in socks:
        s.close()
    closed = (f"all 3 closed by the server {seconds:.1f} s later (answers stalled, then the header deadline)"
              if seconds < 30 else "still open after 30 s")
    return ("3 connections pipeline up to 5,000 requests each and never read an answer", seconds < 30,
            f"{probe}; {closed}")


def half_closed(ctx) -> tuple[str, bool, str]:
    socks = []
    for i in range(300):
        s = connect(ctx.port, ATTACKERS[28 + i % 8], f"GET /v2 HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode() if i % 2 else b"")
        s.shutdown(socket.SHUT_WR)
        socks.append(s)
    ctx.wait(DEADLINE + 3)
    left = still_open(socks)
    for s in socks:
        s.close()
    ctx.wait(0.5)
    fds = ctx.watch.proc.num_fds()
    return ("300 connections half-closed (150 after a request, never reading the answer)", left == 0 and fds < 40,
            f"{300 - left} closed, {fds} descriptors open afterwards")


def gzip_bomb(ctx) -> tuple[str, bool, str]:
    body = gzip.compress(b"\0" * (512 << 20), 9)
    status = ctx.server.request("POST", "/classify", body, headers={
        "Content-Type": "image/jpeg", "Content-Encoding": "gzip"}, timeout=30)[0]
    return (f"/classify body gzip of 512 MB of zeros ({len(body) >> 10} KB)", status == 413, f"answered {status}")


def burst(ctx) -> tuple[str, bool, str]:
    with ThreadPoolExecutor(300) as pool:
        statuses = list(pool.map(lambda _: _status(ctx, "POST", "/classify", ctx.photo, {"Content-Type": "image/jpeg"}),
                                 range(300)))
    ok = all(s in (200, 503) for s in statuses)
    return ("300 authorized /classify at once (one connection each)", ok,
            f"{statuses.count(200)} answered 200, {statuses.count(503)} 503 with Retry-After, "
            f"{len(statuses) - statuses.count(200) - statuses.count(503)} other")


def _status(ctx, method, path, body, headers) -> int:
    try:
        return ctx.server.request(method, path, body, headers=headers, timeout=30)[0]
    except OSError:
        return 0


def stalled_uploads(ctx) -> tuple[str, bool, str]:
    head = (f"PUT /v2/models/model/artifact HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 50000000\r\n"
            "Content-Type: multipart/form-data; boundary=bbbbbbbbbbbbbbbb\r\n\r\n--bbbbbbbbbbbbbbbb\r\n"
            "Content-Disposition: form-data; name=\"artifact\"; filename=\"a\"\r\n\r\n").encode()
    between = b"\0" * (4 << 20) + b"\r\n--bbbbbbbbbbbbbbbb\r\n"  # the artifact part, then silence before the next
    socks = [connect(ctx.port, ATTACKERS[36], head + between) for _ in range(3)]
    start = time.monotonic()
    answers = [status_of(answer(s, DEADLINE + 4)) for s in socks]
    seconds = time.monotonic() - start
    for s in socks:
        s.close()
    ctx.wait(0.5)
    parked = list((ctx.state / "models").glob("incoming-*/*"))
    return ("3 authorized model uploads send a 4 MB artifact part each and stall before the next part",
            sorted(answers) == [408, 408, 503] and not parked,
            f"answers {sorted(answers)} within {seconds:.1f} s; {len(parked)} files left in incoming-*")


def sigterm_keepalive(ctx) -> tuple[str, bool, str]:
    import http.client

    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ctx.port, timeout=10)
        try:
            while not stop.is_set():
                conn.request("POST", "/classify", body=ctx.photo, headers={"Content-Type": "image/jpeg",
                                                                          "Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                resp.read()
                if resp.will_close:
                    return
        except (OSError, http.client.HTTPException):
            return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    start = time.monotonic()
    ctx.server.proc.send_signal(signal.SIGTERM)
    try:
        rc = ctx.server.proc.wait(35)
    except Exception:  # noqa: BLE001 - reported below
        rc = None
    seconds = time.monotonic() - start
    stop.set()
    return ("4 keep-alive clients send /classify back to back through SIGTERM", rc == 0 and seconds < 10,
            f"exit {rc} {seconds:.1f} s after SIGTERM")


ATTACKS = [("S1 idle connections", idle_connections), ("S1 slow-loris headers", slowloris_headers),
           ("S1 one address", one_address), ("anonymous slow bodies", lambda c: slow_bodies(c, False)),
           ("S4 authorized slow bodies", lambda c: slow_bodies(c, True)), ("S3 pixel bombs", pixel_bombs),
           ("large JSON bodies", big_json_bodies), ("multipart part counts", many_parts),
           ("BYTES element counts", many_images),
           ("oversized heads", big_heads), ("pipelining flood", pipelining), ("half-closed sockets", half_closed),
           ("gzip bomb", gzip_bomb), ("burst", burst), ("S4 stalled uploads", stalled_uploads),
           ("S11 SIGTERM under keep-alive", sigterm_keepalive)]


class Context:
    def __init__(self, server: Server, photo: bytes, state: Path):
        self.server, self.port, self.photo, self.state = server, server.port, photo, state
        self.watch = Watch(server.proc.pid)
        self.probe = Probe(server, photo)
        self.base_rss = 0

    @staticmethod
    def wait(seconds: float) -> None:
        time.sleep(seconds)


def run(args) -> list[dict]:
    assets = Path(os.environ.get("EDGECLS_ASSETS") or ROOT.parent / "shared")
    coral = assets / "models/coral"
    tmp = Path(tempfile.mkdtemp(prefix="serve-attack-"))
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite",
                           (coral / "imagenet_labels.txt").read_text().splitlines(), tmp / "model")
    server = Server(model, "--state-dir", tmp / "state", *shlex.split(args.server_args), open_files=OPEN_FILES,
                    python=args.python, cwd=Path(args.cwd) if args.cwd else ROOT)
    ctx = Context(server, (assets / "images/imagenet-photos/parrot.jpg").read_bytes(), tmp / "state")
    rows, start = [], time.monotonic()
    try:
        ctx.probe()  # warm-up: the first request opens the decode threads
        for name, attack in ATTACKS:
            if args.only and not any(word in name for word in args.only.split(",")):
                continue
            row = {"attack": name}
            if time.monotonic() - start > BUDGET or server.proc.poll() is not None:
                rows.append({**row, "tried": "", "held": None, "measured": "skipped (time budget or server gone)"})
                continue
            with ctx.watch.phase(row):
                ctx.base_rss = ctx.watch.proc.memory_info().rss
                tried, held, measured = attack(ctx)
            rows.append({**row, "tried": tried, "held": held, "measured": measured, "seconds": time.monotonic() - start})
            print(f"{name}: {'held' if held else 'BROKE'} — {measured} (fds peak {row['fds_peak']}, "
                  f"RSS +{row['rss_growth_mb']} MB)", flush=True)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows.append({"attack": "total", "measured": f"{time.monotonic() - start:.0f} s, server log: "
                 f"{sum('Traceback' in line for line in server.log)} tracebacks"})
    return rows


def table(rows: list[dict]) -> str:
    out = [f"`edgecls serve` under `ulimit -n {OPEN_FILES}`, --header-timeout and --read-timeout {DEADLINE:g} s, "
           "other limits at their defaults; attackers on 127.0.0.2-.41, the authorized probe on 127.0.0.1.", "",
           "| attack | tried | held | measured | server fds peak | RSS growth MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        held = "" if r.get("held") is None else ("yes" if r["held"] else "**no**")
        out.append(f"| {r['attack']} | {r.get('tried', '')} | {held} | {r['measured']} | {r.get('fds_peak', '')} | "
                   f"{r.get('rss_growth_mb', '')} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--python", help="the interpreter that runs the server (default: this one)")
    parser.add_argument("--cwd", help="run the server from this checkout (its edgecls first on the path)")
    parser.add_argument("--server-args", default=f"--header-timeout {DEADLINE:g} --read-timeout {DEADLINE:g}")
    parser.add_argument("--only", help="comma-separated words: run only the attacks whose names hold one")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))  # the attackers' own sockets
    text = table(run(args))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
