"""Model updates over HTTP: PUT (or POST) a multipart form with the parts "artifact" and
"manifest" (and "weights" for an OpenVINO .bin, "cam" for an explain artifact's .cam.npz, one
"check" part per check image the manifest lists, its file name the image's name there);
POST .../rollback serves the model before the current one again. ?force=true swaps a model in
with nothing to compare it with (`models`). The server names every file it writes."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from aiohttp import web

from ..errors import ModelError
from .api import named_model, service
from .bodies import UploadClock, read_part, save_part
from .images import RequestError
from .models import SUFFIX_BY_FORMAT, UpdateBusy, UpdateRefused
from .update_check import MAX_CHECK_IMAGES, staged_check_image

routes = web.RouteTableDef()
PARTS = ("artifact", "manifest", "weights", "cam", "check")
MAX_PARTS = len(PARTS) - 1 + MAX_CHECK_IMAGES


@routes.put("/v2/models/{model}/artifact")
@routes.post("/v2/models/{model}/artifact")
async def update(request: web.Request) -> web.Response:
    svc = service(request)
    named_model(request)
    if not request.content_type.startswith("multipart/"):
        raise RequestError(415, "send a multipart/form-data body with the parts \"artifact\" and \"manifest\"")
    force = _force(request)
    limits = svc.cfg.limits
    if request.content_length is not None and request.content_length > limits.max_model_bytes:
        raise RequestError(413, f"the upload is larger than {limits.max_model_mb:g} MB (--max-model-mb)")
    with svc.admission.slot(), svc.uploads.slot():  # parked uploads are bounded in count, and so on disk
        folder = svc.store.new_folder()
        try:
            await _receive(request, folder, limits)
        except BaseException:  # a stall (408), a client that left, a refusal: nothing stays behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return await _answer(svc, asyncio.to_thread(svc.store.accept, folder, "upload", force), "upload")


def _force(request: web.Request) -> bool:
    """?force=true: swap the model in even when there is nothing to compare it with (no check images,
    no recent pictures); a failed check still refuses it."""
    value = request.query.get("force", "false")
    if value not in ("true", "false", "1", "0"):
        raise RequestError(400, f"query parameter force={value!r}: expected true or false")
    return value in ("true", "1")


@routes.post("/v2/models/{model}/rollback")
async def rollback(request: web.Request) -> web.Response:
    svc = service(request)
    named_model(request)
    return await _answer(svc, asyncio.to_thread(svc.store.rollback), "rollback")


async def _answer(svc, work, kind: str) -> web.Response:
    try:
        result = await work
    except UpdateBusy as exc:
        raise RequestError(409, str(exc)) from None
    except UpdateRefused as exc:
        svc.metrics.updates.labels(f"{kind}_refused").inc()
        current = svc.store.current
        return web.json_response({"error": f"{kind} refused: {exc}; model v{current.version} keeps serving",
                                  "checks": exc.checks, "model": current.describe()}, status=422)
    svc.metrics.updates.labels(f"{kind}_{'accepted' if result.get('swapped') else 'unchanged'}").inc()
    return web.json_response(result)


async def _receive(request: web.Request, folder: Path, limits) -> None:
    """Store the parts under server-chosen names; the manifest decides the artifact's suffix."""
    from ..files import loads_strict
    from ..manifest import Manifest

    budget, clock = [limits.max_model_bytes], UploadClock(limits.read_timeout)
    doc, checks, count = None, [], 0
    try:
        async for part in clock.parts(request):
            count += 1
            if count > MAX_PARTS:
                raise RequestError(400, f"more than {MAX_PARTS} parts")
            if part.name not in PARTS:
                raise RequestError(400, f"unknown part {part.name!r}; expected {', '.join(PARTS)}")
            if part.name == "manifest":
                try:
                    doc = loads_strict(await read_part(part, 4 << 20, "the manifest", "4 MB", clock))  # NaN is not JSON
                    manifest = Manifest.from_dict(doc, "the uploaded manifest")
                except (ValueError, RecursionError):
                    raise RequestError(400, "the manifest part is not JSON") from None
                except ModelError as exc:
                    raise RequestError(400, str(exc)) from None
            elif part.name == "check":  # its file name is only compared with the manifest's, never a path
                if len(checks) >= MAX_CHECK_IMAGES:
                    raise RequestError(400, f"more than {MAX_CHECK_IMAGES} \"check\" parts")
                checks.append(part.filename or "")
                await save_part(part, folder / f"check-{len(checks)}.part", budget, "--max-model-mb", clock)
            else:
                await save_part(part, folder / f"{part.name}.part", budget, "--max-model-mb", clock)
    except ValueError as exc:
        raise RequestError(400, f"malformed multipart body: {exc}") from None
    if doc is None or not (folder / "artifact.part").is_file():
        raise RequestError(400, "the upload needs both an \"artifact\" and a \"manifest\" part")
    suffix = SUFFIX_BY_FORMAT.get(manifest.format)
    if suffix is None:
        raise RequestError(400, f"manifest format {manifest.format!r}: expected one of {', '.join(SUFFIX_BY_FORMAT)}")
    _place(folder, suffix, doc)
    _place_checks(folder / f"model{suffix}", manifest, checks)


def _place_checks(artifact: Path, manifest, names: list[str]) -> None:
    """Each received "check" part to the server's name for the manifest entry its file name matches."""
    for n, name in enumerate(names, 1):
        index = next((k for k, c in enumerate(manifest.checks) if name in (c["image"], Path(c["image"]).name)
                      and not staged_check_image(artifact, k, c["image"]).exists()), None)
        if index is None:
            raise RequestError(400, f"the \"check\" part {name!r} is no check image of the manifest (or came twice); "
                                    "name each part as the manifest's checks list its image")
        target = staged_check_image(artifact, index, manifest.checks[index]["image"])
        target.parent.mkdir(exist_ok=True)
        (artifact.parent / f"check-{n}.part").rename(target)


def _place(folder: Path, suffix: str, doc: dict) -> None:
    from ..files import atomic_write_json

    weights = folder / "weights.part"
    if suffix == ".xml":
        companions = doc.get("companions") or {}
        if len(companions) != 1 or not weights.is_file():
            raise RequestError(400, "an OpenVINO model needs its weights as the part \"weights\", and a manifest "
                                    "that lists exactly one companion (the .bin) with its checksum")
        doc["companions"] = {"model.bin": next(iter(companions.values()))}
        weights.rename(folder / "model.bin")
    elif weights.exists():
        raise RequestError(400, "a \"weights\" part belongs only to an OpenVINO model")
    (folder / "artifact.part").rename(folder / f"model{suffix}")
    if (folder / "cam.part").exists():
        (folder / "cam.part").rename(folder / f"model{suffix}.cam.npz")
    atomic_write_json(folder / f"model{suffix}.json", doc)
