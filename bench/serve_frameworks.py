"""Web framework + server candidates for `edgecls serve`, measured the same way on this host.

Each candidate serves the same two routes from a fresh process: GET /health (a small JSON answer)
and POST /echo (reads a JPEG body (parrot.jpg, 583 KB), answers its length as JSON). Measured per candidate:
start-up (spawn -> first 200), resident memory idle and after the load, and latency p50/p99 of
both routes at concurrency 1 over one keep-alive connection (stdlib http.client, so the client is
the same for all). The candidates need not be installed in edgecls' environment: `--python` names
an interpreter that has them (a scratch venv), e.g.

    python -m venv /tmp/fw && /tmp/fw/bin/pip install aiohttp starlette uvicorn python-multipart \
        litestar flask waitress simple-websocket websockets psutil
    python bench/serve_frameworks.py --python /tmp/fw/bin/python --out bench/results/serve_frameworks.md
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPS = {
    "aiohttp": '''
from aiohttp import web
async def health(request):
    return web.json_response({"ok": True})
async def echo(request):
    body = await request.read()
    return web.json_response({"bytes": len(body)})
async def ws(request):
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        await sock.send_str(msg.data)
    return sock
app = web.Application(client_max_size=50 << 20)
app.add_routes([web.get("/health", health), web.post("/echo", echo), web.get("/ws", ws)])
web.run_app(app, host="127.0.0.1", port=PORT, print=None, access_log=None)
''',
    "starlette+uvicorn": '''
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
import multipart  # python-multipart: what Starlette needs to parse the multipart uploads serve takes
async def health(request):
    return JSONResponse({"ok": True})
async def echo(request):
    body = await request.body()
    return JSONResponse({"bytes": len(body)})
async def ws(socket):
    await socket.accept()
    async for text in socket.iter_text():
        await socket.send_text(text)
app = Starlette(routes=[Route("/health", health), Route("/echo", echo, methods=["POST"]), WebSocketRoute("/ws", ws)])
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False)
''',
    "litestar+uvicorn": '''
import uvicorn
from litestar import Litestar, Request, WebSocket, get, post, websocket
import multipart
@get("/health")
async def health() -> dict:
    return {"ok": True}
@post("/echo", status_code=200)
async def echo(request: Request) -> dict:
    body = await request.body()
    return {"bytes": len(body)}
@websocket("/ws")
async def ws(socket: WebSocket) -> None:
    await socket.accept()
    while True:
        await socket.send_text(await socket.receive_text())
app = Litestar([health, echo, ws], request_max_body_size=50 << 20)
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False)
''',
    "flask+waitress": '''
from flask import Flask, jsonify, request
from waitress import serve
import simple_websocket  # WebSockets for Flask (flask-sock) run on its threads; waitress has none of its own
app = Flask(__name__)
@app.get("/health")
def health():
    return jsonify(ok=True)
@app.post("/echo")
def echo():
    return jsonify(bytes=len(request.get_data()))
serve(app, host="127.0.0.1", port=PORT, threads=4, _quiet=True)
''',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return time.perf_counter()
        except OSError:
            time.sleep(0.005)
    raise RuntimeError("server did not answer within 30 s")


def latencies(port: int, method: str, path: str, body: bytes | None, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    headers = {"Content-Type": "image/jpeg"} if body else {}
    for _ in range(n):
        t = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}")
        out.append((time.perf_counter() - t) * 1e3)
    conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def measure(name: str, python: str, body: bytes, n: int, starts: int) -> dict:
    startup, idle = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(starts):
            port = free_port()
            script = Path(tmp) / f"app_{attempt}.py"
            script.write_text(APPS[name].replace("PORT", str(port)))
            t0 = time.perf_counter()
            proc = subprocess.Popen([python, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                startup.append((wait_up(port, proc) - t0) * 1e3)
                time.sleep(0.3)
                idle.append(rss_mb(proc.pid))
                if attempt == starts - 1:
                    latencies(port, "GET", "/health", None, 100)  # warm-up
                    get = latencies(port, "GET", "/health", None, n)
                    post = latencies(port, "POST", "/echo", body, n)
                    loaded = rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(10)
    return {"framework": name, "startup_ms": statistics.median(startup), "rss_idle_mb": statistics.median(idle),
            "rss_loaded_mb": loaded, "get_p50_ms": pct(get, 50), "get_p99_ms": pct(get, 99),
            "post_p50_ms": pct(post, 50), "post_p99_ms": pct(post, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="interpreter that has the candidates installed")
    assets = Path(os.environ.get("EDGECLS_ASSETS", Path(__file__).resolve().parents[1].parent / "shared"))
    ap.add_argument("--image", type=Path, default=assets / "images/imagenet-photos/parrot.jpg")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--starts", type=int, default=5, help="fresh starts per candidate (start-up is their median)")
    ap.add_argument("--only", default=",".join(APPS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    body = args.image.read_bytes()
    rows = []
    for name in args.only.split(","):
        row = measure(name, args.python, body, args.requests, args.starts)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        rows.append(row)
    versions = subprocess.run([args.python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    keep = [line for line in versions.splitlines()
            if line.split("==")[0].lower() in ("aiohttp", "starlette", "uvicorn", "litestar", "flask", "waitress", "h11", "websockets",
                                             "python-multipart", "simple-websocket")]
    lines = [f"# Web framework candidates for `edgecls serve` ({args.requests} requests per route, c=1, "
             "each app with a WebSocket route and its multipart parser imported)", "",
             "`" + " ".join(sys.argv) + "`", "", "versions: " + ", ".join(keep), "",
             f"| framework | start-up ms | RSS idle MB | RSS after load MB | GET p50 / p99 ms | POST {len(body) // 1024} KB p50 / p99 ms |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['framework']} | {r['startup_ms']:.0f} | {r['rss_idle_mb']:.1f} | {r['rss_loaded_mb']:.1f} | "
                     f"{r['get_p50_ms']:.2f} / {r['get_p99_ms']:.2f} | {r['post_p50_ms']:.2f} / {r['post_p99_ms']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
