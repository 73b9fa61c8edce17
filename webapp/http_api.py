"""POST /api/search: the same search as /search in one multipart request, with 503 beyond its waiting room."""

from __future__ import annotations

from functools import partial

import fastapi
from fastapi import Query
from fastapi.responses import JSONResponse

from webapp.context import AppContext
from webapp.messages import MAX_FILE_MB, QueryError, busy, text_field, too_large, unknown_image, wrong_field
from webapp.queries import DEFAULT_K, log, max_k, run_query
from webapp.records import IMAGE_SIZES, confidence_of, records_of, root_url, timings_of

MAX_FILE_SIZE = f"{MAX_FILE_MB}mb"  # as Gradio's max_file_size takes it
MAX_FILE_BYTES = MAX_FILE_MB * 1024 * 1024


HTTP_STATUS = {"Not a usable image": 415, "Too large": 413, "Busy": 503, "Unknown image": 404,
               "Search unavailable": 503}
# Plain HTTP callers admitted at once: the rest get 503 without a byte of their body read. Each one
# admitted holds its upload (at most MAX_FILE_BYTES) and a thread while it waits for the gate; 16
# bound that to 320 MB, and 16 queries are a few seconds of work (benchmarks.abuse; docs/app.md, "What a stranger can send").
HTTP_MAX_WAITING = 16
# A request body may carry one file of MAX_FILE_BYTES and a little multipart framing; an address
# (path or query string) 8 KiB, as most servers allow.
MAX_BODY_BYTES = MAX_FILE_BYTES + 256 * 1024
MAX_URL_BYTES = 8 * 1024
# Index images do not change while the app runs: a browser may keep them a day.
IMAGE_CACHE = "public, max-age=86400"


def http_search(ctx: AppContext, data: bytes | None, k, box, *, root: str = "", admitted: bool = False) -> tuple[int, dict]:
    """Runs one query of the plain HTTP endpoint; returns (status, JSON body).

    The same checks, messages and records as /search; errors are {"error", "title"} with an HTTP status.
    `data` is the uploaded file's bytes (b"" for an empty file), None when none was sent.
    `admitted`: the caller already holds a place in the gate's waiting room (see `add_http_api`).
    """
    try:
        if data is not None and len(data) > MAX_FILE_BYTES:
            raise too_large()
        if not admitted and not ctx.gate.try_wait():
            raise busy(ctx.gate.max_waiting)
        try:
            k = int(k) if str(k).strip().isascii() and str(k).strip().isdigit() else k  # not "²"
            result, _ = run_query(ctx, data, k, box)
        finally:
            if not admitted:
                ctx.gate.done_waiting()
    except QueryError as e:
        return http_error(e)
    return 200, {"results": records_of(result, root), "confidence": confidence_of(result),
                 "timings": timings_of(result, ctx.engine)}


def http_error(e: QueryError) -> tuple[int, dict]:
    """Returns (status, {"error", "title"}) of a refused HTTP query, after one log line."""
    log.info("refused (HTTP): %s: %s", e.title, e)
    return HTTP_STATUS.get(e.title, 400), {"error": str(e), "title": e.title}


async def read_image_field(request: fastapi.Request):
    """Returns the multipart field "image" of a request as an UploadFile, or None when there is none.

    Raises:
        QueryError: the body is not multipart form data, or "image" is text, not a file.
    """
    from starlette.datastructures import UploadFile as StarletteUpload
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=1, max_fields=16)
    except (MultiPartException, HTTPException, AssertionError, ValueError) as e:
        why = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
        raise QueryError("Bad request", f"Send the image as multipart form data, field \"image\" ({why}).") from None
    image = form.get("image")
    if image is None:
        others = [name for name, value in form.multi_items() if isinstance(value, StarletteUpload)]
        if others:
            raise wrong_field(others[0])
        return None
    if not isinstance(image, StarletteUpload):
        raise text_field()
    return image


def add_http_api(app, ctx: AppContext) -> None:
    """Adds POST /api/search?k=&box= (a multipart "image" file: records and timings in one request) and
    GET /api/image?id=&size= (an index image's stored thumbnail or preview, the records' URLs).

    A caller beyond the gate's `max_waiting` admitted ones gets 503 at once, before its body is
    read; the admitted ones wait for the gate in threads of their own, not in the server's shared pool.
    """
    import anyio
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse

    gate = ctx.gate
    threads = anyio.CapacityLimiter(max(1, gate.max_waiting))

    @app.post("/api/search")
    async def api_search(request: fastapi.Request, k: str | None = Query(None), box: str = Query("")):
        if not gate.try_wait():
            status, body = http_error(busy(gate.max_waiting))
            return JSONResponse(body, status_code=status, headers={"Retry-After": "1"})
        try:
            try:
                image = await read_image_field(request)
                data = None if image is None else await image.read(MAX_FILE_BYTES + 1)
            except QueryError as e:
                status, body = http_error(e)
                return JSONResponse(body, status_code=status)
            k = min(DEFAULT_K, max_k(ctx.engine)) if k is None else k  # as /search: 20, or every image of a smaller index
            status, body = await anyio.to_thread.run_sync(
                partial(http_search, ctx, data, k, box, root=root_url(request), admitted=True), limiter=threads)
            return JSONResponse(body, status_code=status)
        finally:
            gate.done_waiting()

    @app.get("/api/search")
    def api_search_get():
        status, body = http_error(QueryError(
            "Use POST", "Search with POST /api/search and the image as the multipart field \"image\" "
            "(curl -F image=@photo.jpg 'http://HOST/api/search?k=10')."))
        return JSONResponse(body, status_code=405, headers={"Allow": "POST"})

    @app.get("/api/image")
    def api_image(id: str = Query(""), size: str = Query("thumbnail")):  # noqa: A002
        if size not in IMAGE_SIZES:
            status, body = http_error(QueryError("Bad size", f"size is thumbnail or preview; got {size[:40]!r}."))
            return JSONResponse(body, status_code=status)
        if id not in ctx.index:  # an index id, never a path
            status, body = http_error(unknown_image(id))
            return JSONResponse(body, status_code=status)
        path = ctx.thumbnails.jpeg(id) if size == "thumbnail" else ctx.thumbnails.preview(id)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": IMAGE_CACHE})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):  # never FastAPI's 422, which echoes the input back
        status, body = http_error(QueryError("Bad request", "The request is not what this endpoint takes: "
                                             "POST /api/search?k=&box= with the multipart field \"image\"."))
        return JSONResponse(body, status_code=status)
