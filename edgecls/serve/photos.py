"""What `edgecls pull` reads: the collection's photos placed after a sequence number (added, or
moved to another class), with checksums and provenance, and each photo's bytes (Range requests
answered, so a pull cut off mid-file resumes where it stopped). A photo is named by its sequence
number, never by a path."""
from __future__ import annotations

from aiohttp import web

from .collect import collection_of
from .images import RequestError

MAX_LISTED = 1000
routes = web.RouteTableDef()


@routes.get("/api/photos")
async def listing(request: web.Request) -> web.Response:
    """?since=SEQ&limit=N: photos placed after SEQ, oldest first; `more` when the limit cut the list."""
    collection = collection_of(request)
    try:
        since, limit = int(request.query.get("since", 0)), int(request.query.get("limit", MAX_LISTED))
    except ValueError:
        raise RequestError(400, "since and limit must be integers") from None
    if since < 0 or not 1 <= limit <= MAX_LISTED:
        raise RequestError(400, f"since must be at least 0 and limit within 1..{MAX_LISTED}")
    photos, more = collection.since(since, limit)
    return web.json_response({"device": collection.device, "photos": [p.to_dict() for p in photos], "more": more,
                              "count": len(collection.photos())})


@routes.get("/api/photos/{seq:[0-9]{1,12}}")
async def photo(request: web.Request) -> web.StreamResponse:
    """The bytes of one photo (Range supported); its checksum in X-Sha256."""
    collection = collection_of(request)
    found = collection.by_seq(int(request.match_info["seq"]))
    if found is None or not collection.path(found).is_file():
        raise RequestError(404, "no photo with that sequence number (moved, removed or undone since the listing)")
    return web.FileResponse(collection.path(found), headers={"X-Sha256": found.sha256, "Cache-Control": "no-store",
                                                             "Content-Type": "application/octet-stream"})
