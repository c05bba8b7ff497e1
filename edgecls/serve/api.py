"""Inference and health routes: KServe Open Inference Protocol v2 (with Triton's classification
extension and the binary tensor extension) and a plain POST /classify."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from aiohttp import web

from .. import __version__
from .images import RequestError, prepare_upload

DATATYPES = {"UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
             "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
PLATFORMS = {"litert": "tensorflow_lite", "onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}
routes = web.RouteTableDef()


def service(request: web.Request):
    from .app import SERVICE

    return request.app[SERVICE]


def datatype(dtype: np.dtype) -> str:
    return {np.dtype(v): k for k, v in DATATYPES.items()}[np.dtype(dtype)]


def named_model(request: web.Request):
    svc = service(request)
    name = request.match_info["model"]
    if name != svc.cfg.name:
        raise RequestError(404, f"no model named {name!r}; this server serves {svc.cfg.name!r}")
    return svc.store.current


# --- health ------------------------------------------------------------------------
@routes.get("/v2/health/live")
async def live(request: web.Request) -> web.Response:
    ok, reasons = service(request).live()
    return web.json_response({"live": ok, **({"reasons": reasons} if reasons else {})}, status=200 if ok else 503)


@routes.get("/v2/health/ready")
async def ready(request: web.Request) -> web.Response:
    ok, reasons = service(request).ready()
    return web.json_response({"ready": ok, **({"reasons": reasons} if reasons else {})}, status=200 if ok else 503)


@routes.get("/v2/models/{model}/ready")
async def model_ready(request: web.Request) -> web.Response:
    named_model(request)
    return await ready(request)


# --- metadata ------------------------------------------------------------------------
@routes.get("/v2")
async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "edgecls", "version": __version__,
                              "extensions": ["classification", "binary_tensor_data", "model_update"]})


@routes.get("/v2/models/{model}")
async def model_metadata(request: web.Request) -> web.Response:
    model = named_model(request)
    clf, svc = model.clf, service(request)
    inp, out = clf.engine.input, clf.engine.output
    manifest = clf.manifest
    return web.json_response({
        "name": svc.cfg.name, "versions": [str(model.version)], "platform": PLATFORMS.get(clf.engine.name, clf.engine.name),
        "inputs": [{"name": inp.name, "datatype": datatype(inp.dtype), "shape": list(inp.shape)},
                   {"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.labels)]}],
        "parameters": {"edgecls": {**model.describe(), "labels": model.labels, "layout": clf.layout,
                                   "preprocessing": clf.preprocessing.to_dict(),
                                   "verification": manifest.verification if manifest else None}}})


# --- inference -----------------------------------------------------------------------
REFERENCE_SIDE = 320  # the copy of a request picture kept for model checks (live.LiveFeed.remember)


def _prepare(svc, model, data: bytes, what: str, keep: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
    """(a small copy of the picture when `keep`, model input without a batch dimension): decode,
    prepare, drop the full-size picture, under the server's decode budget."""
    return prepare_upload(data, svc.cfg.limits.max_pixels, svc.decoding, model.clf.prepare, what,
                          REFERENCE_SIDE if keep else 0)


def _prepare_one(svc, model, data: bytes, keep: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """(small copy or None, a batch of one): for the engine thread's own decoding."""
    small, inputs = _prepare(svc, model, data, "the image", keep)
    return small, inputs[None]


async def _prepared(svc, model, images: list[bytes], keep: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode and prepare pictures in the decode threads (OpenCV releases the GIL), one at a time:
    only model inputs (and a small copy of the first picture when `keep`) are kept."""
    loop = asyncio.get_running_loop()
    inputs, small = [], None
    for i, data in enumerate(images):
        copy, prepared = await loop.run_in_executor(svc.decoder, _prepare, svc, model, data,
                                                    f"image {i}" if len(images) > 1 else "the image", keep and not i)
        small = small if copy is None else copy
        inputs.append(prepared)
    return np.stack(inputs), small


@routes.post("/classify")
async def classify(request: web.Request) -> web.Response:
    from ..runtime import top_k
    from .bodies import image_bytes

    svc = service(request)
    k = _int_query(request, "k", svc.cfg.top_k)
    start = time.perf_counter()
    with svc.admission.slot():
        data = await image_bytes(request, svc.cfg.limits.max_upload_bytes, svc.cfg.limits.read_timeout)
        received = time.perf_counter()
        model = svc.store.current
        keep = svc.feed.claim_reference()  # at most once a second: a small copy kept for model checks
        if svc.worker.idle:
            job = await svc.worker.run(model, None, prepare=lambda: _prepare_one(svc, model, data, keep))
            picture, decode_ms = job.picture, job.decode_ms
        else:
            inputs, picture = await _prepared(svc, model, [data], keep)
            decode_ms = _ms(time.perf_counter() - received)
            job = await svc.worker.run(model, inputs)
    if picture is not None:  # already small (320 pixels on its longer side); kept, and now and then saved, off the loop
        asyncio.get_running_loop().run_in_executor(svc.decoder, svc.feed.remember, picture)
    top = top_k(job.scores[0], model.labels, k)
    return web.json_response({
        "top_k": [[label, round(p, 6)] for label, p in top],
        "latency_ms": {"receive": _ms(received - start), "decode": round(decode_ms, 3), "queue": round(job.queue_ms, 3),
                       "inference": round(job.inference_ms, 3), "total": _ms(time.perf_counter() - start)},
        "model": {"name": svc.cfg.name, **model.describe()}})


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _int_query(request: web.Request, key: str, default: int) -> int:
    from .schema import ascii_int

    value = request.query.get(key)
    if value is None:
        return default
    number = ascii_int(value)
    if number is None or not 1 <= number <= 1000:
        raise RequestError(400, f"query parameter {key}={value!r}: expected an integer from 1 to 1000 (ASCII digits)")
    return number


@routes.post("/v2/models/{model}/infer")
async def infer(request: web.Request) -> web.Response:
    from .bodies import read_body
    from .schema import images, parse_infer

    svc = service(request)
    named_model(request)
    with svc.admission.slot():
        body = await read_body(request, svc.cfg.limits.max_upload_bytes, svc.cfg.limits.read_timeout)
        req = parse_infer(body, request.headers.get("Inference-Header-Content-Length"))
        model = svc.store.current
        if req.input.datatype == "BYTES":  # pictures this server decodes and prepares: known-good inputs
            inputs, _ = await _prepared(svc, model, images(req.input, 16))
            job = await svc.worker.run(model, inputs)
        else:  # the client's own tensor: a failure on it is the input's fault unless the engine fails a known-good one
            job = await svc.worker.run(model, _tensor(req.input, model.clf.engine.input), trusted=False)
    return web.json_response({"model_name": svc.cfg.name, "model_version": str(model.version),
                              **({"id": req.id} if req.id is not None else {}),
                              "outputs": [_output(req.classification, job.scores, model.labels)]})


def _tensor(tensor, info) -> np.ndarray:
    """A validated model-input tensor (`schema.TensorInput`) checked against the model: datatype,
    shape (any batch of 1 to 16), values finite and within the datatype — after the conversion
    too (3e38 fits FP32 and overflows FP16)."""
    expected = datatype(info.dtype)
    shape, want = tensor.shape, [-1, *info.shape[1:]]
    if tensor.datatype != expected:
        raise RequestError(400, f"input datatype {tensor.datatype!r}: this model takes {expected} (or BYTES images)")
    if len(shape) != len(want) or any(d < 1 for d in shape) or any(w not in (-1, d) for w, d in zip(want, shape)) \
            or shape[0] > 16:
        raise RequestError(400, f"input shape {shape!r}: this model takes {want} (batch 1 to 16)")
    if tensor.binary is not None:
        if len(tensor.binary) != tensor.count * np.dtype(info.dtype).itemsize:
            raise RequestError(400, f"binary tensor data has {len(tensor.binary)} bytes, expected {tensor.count} x "
                                    f"{expected}")
        values = np.frombuffer(tensor.binary, dtype=info.dtype)
    else:
        try:  # numbers only (the schema refused strings and bools); an integer beyond any float overflows
            values = np.asarray(tensor.data, dtype=np.float64)
        except OverflowError:
            raise RequestError(400, f"input \"data\" holds an integer beyond {expected}'s range") from None
        if np.issubdtype(info.dtype, np.integer):
            limits = np.iinfo(info.dtype)
            if not np.all(np.isfinite(values)) or values.min() < limits.min or values.max() > limits.max \
                    or np.any(values != np.round(values)):
                raise RequestError(400, f"input \"data\" must be integers in [{limits.min}, {limits.max}] for {expected}")
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(info.dtype)
    if np.issubdtype(info.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise RequestError(400, f"input data holds values that are not finite {expected} numbers (NaN, infinity, or "
                                f"beyond {expected}'s range); send the values the model's preprocessing makes")
    return np.ascontiguousarray(values.reshape(shape))


def _output(k: int | None, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Probabilities, or the top `k` classes as "score:index:label" strings (classification extension)."""
    if k is None:
        return {"name": "probabilities", "datatype": "FP32", "shape": list(scores.shape),
                "data": [round(float(v), 7) for v in scores.reshape(-1)]}
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    data = [f"{scores[n, i]:.6f}:{i}:{labels[i]}" for n in range(scores.shape[0]) for i in order[n]]
    return {"name": "probabilities", "datatype": "BYTES", "shape": [scores.shape[0], k], "data": data}
