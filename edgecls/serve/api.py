"""Inference and health routes: KServe Open Inference Protocol v2 (with Triton's classification
extension and the binary tensor extension) and a plain POST /classify."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

import numpy as np
from aiohttp import web

from .. import __version__
from .images import RequestError, decode_upload

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
def _prepare(model, data: bytes, max_pixels: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(picture, model input without a batch dimension)."""
    rgb = decode_upload(data, max_pixels, what)
    return rgb, model.clf.prepare(rgb)


def _prepare_one(model, data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(picture, a batch of one): for the engine thread's own decoding."""
    rgb, inputs = _prepare(model, data, max_pixels, "the image")
    return rgb, inputs[None]


async def _prepared(svc, model, images: list[bytes]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Decode and prepare pictures in the decode threads (OpenCV releases the GIL)."""
    loop = asyncio.get_running_loop()
    done = [await loop.run_in_executor(svc.decoder, _prepare, model, data, svc.cfg.limits.max_pixels,
                                       f"image {i}" if len(images) > 1 else "the image")
            for i, data in enumerate(images)]
    return np.stack([inputs for _, inputs in done]), [rgb for rgb, _ in done]


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
        if svc.worker.idle:
            job = await svc.worker.run(model, None, prepare=lambda: _prepare_one(model, data, svc.cfg.limits.max_pixels))
            picture, decode_ms = job.picture, job.decode_ms
        else:
            inputs, pictures = await _prepared(svc, model, [data])
            picture, decode_ms = pictures[0], _ms(time.perf_counter() - received)
            job = await svc.worker.run(model, inputs)
    if svc.feed.claim_reference():  # a reference picture for model checks, made off the event loop
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
    value = request.query.get(key)
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise RequestError(400, f"query parameter {key}={value!r}: expected an integer from 1 to 1000")
    return int(value)


@routes.post("/v2/models/{model}/infer")
async def infer(request: web.Request) -> web.Response:
    from .bodies import read_body

    svc = service(request)
    named_model(request)
    with svc.admission.slot():
        body = await read_body(request, svc.cfg.limits.max_upload_bytes, svc.cfg.limits.read_timeout)
        doc, binary = _split_binary(request, body)
        model = svc.store.current
        tensor = _one_input(doc)
        if tensor.get("datatype") == "BYTES":
            inputs, _ = await _prepared(svc, model, _image_list(tensor, binary))
        else:
            inputs = _tensor(tensor, binary, model.clf.engine.input)
        job = await svc.worker.run(model, inputs)
    return web.json_response({"model_name": svc.cfg.name, "model_version": str(model.version),
                              **({"id": doc["id"]} if isinstance(doc.get("id"), str) else {}),
                              "outputs": [_output(doc, job.scores, model.labels)]})


def _split_binary(request: web.Request, body: bytes) -> tuple[dict, bytes]:
    """The JSON part and the binary part (KServe binary tensor extension)."""
    header = request.headers.get("Inference-Header-Content-Length")
    if header is not None and (not header.isdigit() or int(header) > len(body)):
        raise RequestError(400, f"Inference-Header-Content-Length {header!r} does not fit the body ({len(body)} bytes)")
    cut = int(header) if header is not None else len(body)
    try:
        doc = json.loads(body[:cut])
    except (ValueError, RecursionError):
        raise RequestError(400, "the body is not a JSON inference request ({\"inputs\": [...]})") from None
    if not isinstance(doc, dict):
        raise RequestError(400, "the inference request must be a JSON object with \"inputs\"")
    return doc, body[cut:]


def _one_input(doc: dict) -> dict:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, "\"inputs\" must be a list of exactly one input: the image tensor, or BYTES images")
    return inputs[0]


def _image_list(tensor: dict, binary: bytes) -> list[bytes]:
    """BYTES elements: base64 strings (or {"b64": ...}) in JSON, or length-prefixed in the binary part."""
    if tensor.get("parameters", {}).get("binary_data_size") is not None:
        images, at = [], 0
        while at + 4 <= len(binary):
            n = int.from_bytes(binary[at : at + 4], "little")
            images.append(binary[at + 4 : at + 4 + n])
            at += 4 + n
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError(400, "a BYTES input needs \"data\": a list of base64-encoded images")
        images = []
        for item in data:
            text = item.get("b64") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise RequestError(400, "each BYTES element must be a base64 string (or {\"b64\": string})")
            try:
                images.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise RequestError(400, "a BYTES element is not valid base64") from None
    if not 1 <= len(images) <= 16:
        raise RequestError(400, f"send 1 to 16 images in one request, got {len(images)}")
    return images


def _tensor(tensor: dict, binary: bytes, info) -> np.ndarray:
    """A model-input tensor checked against the model: datatype, shape (any batch), finite values."""
    expected = datatype(info.dtype)
    kind, shape = tensor.get("datatype"), tensor.get("shape")
    want = [-1, *info.shape[1:]]
    if kind != expected:
        raise RequestError(400, f"input datatype {kind!r}: this model takes {expected} (or BYTES images)")
    if not isinstance(shape, list) or len(shape) != len(want) or not all(isinstance(d, int) and d > 0 for d in shape) \
            or any(w not in (-1, d) for w, d in zip(want, shape)) or shape[0] > 16:
        raise RequestError(400, f"input shape {shape!r}: this model takes {want} (batch 1 to 16)")
    count = int(np.prod(shape))
    if tensor.get("parameters", {}).get("binary_data_size") is not None:
        if len(binary) != count * np.dtype(info.dtype).itemsize:
            raise RequestError(400, f"binary tensor data has {len(binary)} bytes, expected {count} x {expected}")
        values = np.frombuffer(binary, dtype=info.dtype)
    else:
        try:
            values = np.asarray(tensor.get("data"), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise RequestError(400, "input \"data\" must be a (flat or nested) list of numbers") from None
        if values.size != count:
            raise RequestError(400, f"input \"data\" has {values.size} values, shape {shape} needs {count}")
        if not np.all(np.isfinite(values)):
            raise RequestError(400, "input \"data\" has non-finite values (NaN or infinity)")
        if np.issubdtype(info.dtype, np.integer):
            limits = np.iinfo(info.dtype)
            if values.min() < limits.min or values.max() > limits.max or np.any(values != np.round(values)):
                raise RequestError(400, f"input \"data\" must be integers in [{limits.min}, {limits.max}] for {expected}")
    return np.ascontiguousarray(values.astype(info.dtype).reshape(shape))


def _output(doc: dict, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Probabilities, or the top classes as "score:index:label" strings when asked (classification extension)."""
    outputs = doc.get("outputs") if isinstance(doc.get("outputs"), list) else []
    k = next((o.get("parameters", {}).get("classification") for o in outputs if isinstance(o, dict)), None)
    if k is None:
        return {"name": "probabilities", "datatype": "FP32", "shape": list(scores.shape),
                "data": [round(float(v), 7) for v in scores.reshape(-1)]}
    if not isinstance(k, int) or k < 1:
        raise RequestError(400, "\"classification\" must be a positive integer (the number of classes to return)")
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    data = [f"{scores[n, i]:.6f}:{i}:{labels[i]}" for n in range(scores.shape[0]) for i in order[n]]
    return {"name": "probabilities", "datatype": "BYTES", "shape": [scores.shape[0], k], "data": data}
