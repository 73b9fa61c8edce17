"""Landmark image search: a Gradio app over a prebuilt index.

Reads its settings, loads one index and the network recorded in it, builds the interface and
serves it, with the Gradio API (/search, /match) and a plain HTTP endpoint (POST /api/search) on
the same port. Features, search and the match view live in `retrieval/`; nothing here computes them.

    python app.py --index DIR            # a folder made by `python -m precompute.build_index`
    INDEX_REPO=user/name python app.py   # an index on the Hugging Face Hub (INDEX_REVISION: a tag/commit)
    python app.py --images DIR           # index a folder of images (incrementally), then serve it
    python app.py                        # the index embedded next to this file, in index/
"""

from __future__ import annotations

import argparse
import atexit
import base64
import io
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

import fastapi
import gradio as gr
import uvicorn
from fastapi import Query
from fastapi.responses import JSONResponse
from gradio.components.api_component import Api
from gradio.context import get_blocks_context
from gradio.data_classes import FileData
from gradio_client import utils as client_utils
from PIL import Image

from retrieval.build import BuildError, os_message
from retrieval.engine import SearchEngine
from retrieval.features import ImageError, crop_box, load_image
from retrieval.hub import HubError, pull_index
from retrieval.index import Index, IndexFormatError, load_index
from retrieval.matchview import match_view
from webapp.guard import (NOT_UPLOADED, NotUploaded, RequestLimits, checked_upload, refuse_non_uploads_in_our_words,
                          return_freed_memory)

DEFAULT_INDEX = Path(__file__).resolve().parent / "index"
DEFAULT_K = 20
MAX_K = 100
# Queries larger than this are downscaled before embedding: the network sees a few hundred
# pixels anyway, and a 48-megapixel phone photo would only cost time and memory.
QUERY_MAX_SIDE = 2048
N_EXAMPLES = 8
PREVIEW_SIDE = 320
PLACEHOLDER_SIDE = 192  # the longest side of a thumbnail (retrieval.features.THUMBNAIL_SIDE)
# Measured on 2 CPU cores (benchmarks/app_latency.py): 20 queries at once finish as soon with
# 1 as with 2 or 4 running together, and each waits least with 1; TensorFlow already spreads one
# forward pass over the cores. 64 queued queries are about 15 s of work.
CONCURRENCY_LIMIT = 1
QUEUE_MAX_SIZE = 64
MAX_FILE_SIZE = "20mb"
MAX_FILE_BYTES = 20 * 1024 * 1024
# Uploaded files and result thumbnails in Gradio's cache: swept hourly, kept one day.
DELETE_CACHE = (3600, 24 * 3600)
# Converted networks (OpenVINO IR), as precompute.options.RUNTIME_CACHE: a second start converts nothing.
RUNTIME_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landmark-search" / "networks"

NO_INDEX_MESSAGE = """No index to serve. Give one of:
  --index DIR        a folder made by `python -m precompute.build_index --images ... --out DIR`
  INDEX_REPO=owner/name [INDEX_REVISION=tag-or-commit]   an index on the Hugging Face Hub
  --images DIR       a folder of images: the app indexes it (incrementally) and serves it
or put an index folder at {default}."""

INTRO = """# Landmark image search
Upload a photo of a building or monument and find the most similar photos among **{count}
images**. To search for part of the photo, **drag a rectangle on it**, then **Search**. Or start
from one of the example images. Click a result to see which details matched.
<small>Each image is described by one vector from a convolutional network ({network}, {pooling}
pooling, run by {runtime}); results are ranked by cosine similarity{rerank}.</small>"""
RERANK_DIFFUSION = (", then re-ranked by diffusion over the collection's neighbour graph, which favours"
                    " photos of the same place; scores are then relative to the best match")

CSS = """
#intro { max-width: 64rem; }
#timing { min-height: 1.6em; }
#results .grid-wrap { max-height: none; }
#examples .grid-wrap { min-height: 0; max-height: none; }
#searched img { max-height: 180px; width: auto; }
#searched figcaption { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
#query img { cursor: crosshair; touch-action: none; user-select: none; -webkit-user-drag: none; }
#box-frame {
  position: absolute; pointer-events: none; border: 2px solid #ffcc00; z-index: 5; display: none;
  box-shadow: 0 0 0 9999px rgba(0, 0, 0, 0.35); outline: 1px solid rgba(0, 0, 0, 0.6);
}
#match img { max-height: 520px; }
#results .caption-label {
  left: var(--block-label-margin); max-width: none; white-space: pre-line; overflow-wrap: anywhere;
  font-size: var(--text-xs); line-height: 1.25; opacity: 0.9;
}
"""
# The share field gets "?id=..": the browser knows the address the page is really served at.
SHARE_JS = "(query) => query ? new URL(query, window.location.href).href : query"
# Dragging on the query image draws the crop rectangle and writes it, in the image's own pixels, into
# the box field; the rectangle is redrawn from the field, so the two always agree (typing or a link
# sets the field too). A click without a drag clears the box. No pixel of the image is changed.
DRAG_JS = """
() => {
  const field = () => document.querySelector('#box textarea, #box input');
  const picture = () => document.querySelector('#query img');
  // The image's own rectangle on the page: the <img> box, less object-fit: contain's bands.
  const placed = (img) => {
    const r = img.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const w = img.naturalWidth * s, h = img.naturalHeight * s;
    return {x: r.left + (r.width - w) / 2, y: r.top + (r.height - h) / 2, w, h, s};
  };
  const frame = (img) => {
    let f = document.getElementById('box-frame');
    const host = img.parentElement;
    if (!f || f.parentElement !== host) {
      if (f) f.remove();
      f = document.createElement('div');
      f.id = 'box-frame';
      if (getComputedStyle(host).position === 'static') host.style.position = 'relative';
      host.style.overflow = 'hidden';
      host.appendChild(f);
    }
    return f;
  };
  const draw = (img, x0, y0, x1, y1) => {  // page coordinates
    const f = frame(img), h = img.parentElement.getBoundingClientRect();
    Object.assign(f.style, {display: 'block', left: (Math.min(x0, x1) - h.left) + 'px',
      top: (Math.min(y0, y1) - h.top) + 'px', width: Math.abs(x1 - x0) + 'px', height: Math.abs(y1 - y0) + 'px'});
  };
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const setField = (text) => {
    const el = field();
    if (!el || el.value === text) return;
    el.value = text;
    el.dispatchEvent(new Event('input', {bubbles: true}));
  };
  let drag = null;
  document.addEventListener('dragstart', (e) => { if (e.target === picture()) e.preventDefault(); }, true);
  document.addEventListener('pointerdown', (e) => {
    const img = picture();
    if (!img || e.target !== img || e.button !== 0 || !img.naturalWidth) return;
    e.preventDefault();
    const p = placed(img);
    const x = clamp(e.clientX, p.x, p.x + p.w), y = clamp(e.clientY, p.y, p.y + p.h);
    drag = {img, p, x0: x, y0: y, x1: x, y1: y};
  }, true);
  document.addEventListener('pointermove', (e) => {
    if (!drag) return;
    drag.x1 = clamp(e.clientX, drag.p.x, drag.p.x + drag.p.w);
    drag.y1 = clamp(e.clientY, drag.p.y, drag.p.y + drag.p.h);
    draw(drag.img, drag.x0, drag.y0, drag.x1, drag.y1);
  }, true);
  document.addEventListener('pointerup', () => {
    if (!drag) return;
    const {p, x0, y0, x1, y1} = drag;
    drag = null;
    if (Math.abs(x1 - x0) < 4 || Math.abs(y1 - y0) < 4) { setField(''); return; }
    const px = (v, o, n) => clamp(Math.round((v - o) / p.s), 0, n);
    const w = picture().naturalWidth, h = picture().naturalHeight;
    setField([px(Math.min(x0, x1), p.x, w), px(Math.min(y0, y1), p.y, h),
              px(Math.max(x0, x1), p.x, w), px(Math.max(y0, y1), p.y, h)].join(','));
  }, true);
  // Redraw from the field: after typing, a link, a new image or a resize.
  setInterval(() => {
    if (drag) return;
    const img = picture(), f = document.getElementById('box-frame');
    const parts = ((field() || {}).value || '').split(/[ ,]+/).filter(Boolean).map(Number);
    if (!img || !img.naturalWidth || parts.length !== 4 || parts.some(isNaN)) {
      if (f) f.style.display = 'none';
      return;
    }
    const p = placed(img);
    const [a, b, c, d] = parts.map((v, i) => clamp(v, 0, i % 2 ? img.naturalHeight : img.naturalWidth));
    draw(img, p.x + a * p.s, p.y + b * p.s, p.x + c * p.s, p.y + d * p.s);
  }, 150);
}
"""
URL_MESSAGE = ("URLs are not fetched: send the image file itself (gradio_client: handle_file(path) of a local "
               "file; HTTP: multipart field \"image\").")
EDITOR_KEYS = ("background", "composite", "layers")
NO_IMAGE = "Upload an image first (or pick one of the examples)."
log = logging.getLogger("landmark-search")


class QueryError(ValueError):
    """A query the app refuses, with a title and a one-line message that names no server path."""

    def __init__(self, title: str, message: str):
        super().__init__(message)
        self.title = title


def refused(error: QueryError) -> gr.Error:
    """Returns the gr.Error for a refused query, after logging it as one line (no traceback)."""
    log.info("refused: %s: %s", error.title, error)
    return gr.Error(str(error), title=error.title, print_exception=False)


def parse_box(text: str | None) -> tuple[int, int, int, int] | None:
    """Returns the (x0, y0, x1, y1) box written as "x0,y0,x1,y1", or None for an empty field.

    Raises:
        QueryError: for anything but four integers.
    """
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        box = tuple(int(float(p)) for p in parts)
    except (ValueError, OverflowError):
        box = ()
    if len(box) != 4:
        raise QueryError("Bad box", f"A box is four whole numbers x0,y0,x1,y1 in pixels; got {str(text)[:80]!r}.")
    return box


def check_k(engine: SearchEngine, k) -> int:
    """Returns k as an int when it is a whole number from 1 to `max_k`; raises QueryError otherwise."""
    try:
        whole = None if isinstance(k, bool) else int(k)  # True is not a count, as in Searcher.check_k
    except (TypeError, ValueError, OverflowError):
        whole = None
    if whole is None or isinstance(k, bool) or whole != k or not 1 <= whole <= max_k(engine):
        raise QueryError("Bad K", f"K must be a whole number from 1 to {max_k(engine)}; got {str(k)[:40]!r}.")
    return whole


def decode_query(source, name: str = "the file") -> Image.Image:
    """Returns the query image decoded by `retrieval.features.load_image` (our pixel limit, our messages).

    Raises:
        QueryError: the file is not an image we can decode safely; the message names no path.
    """
    try:
        return load_image(source)
    except (ImageError, OSError) as e:
        message = str(e).replace(str(source), name) if isinstance(source, (str, Path)) else str(e)
        raise QueryError("Not a usable image", f"This file cannot be used as a query: {message}.") from None


def refuse_urls(component: gr.components.Component) -> gr.components.Component:
    """Returns `component`, made to refuse a URL in a request instead of letting the server download it.

    Gradio fetches a file given by URL into its cache before any handler runs; every file of a
    query must be an upload instead. Set on the instance: a Component subclass would make Gradio
    write a type-stub file next to this one.
    """
    fetch = component.async_move_resource_to_block_cache

    async def no_fetch(url_or_file_path):
        if url_or_file_path is not None and client_utils.is_http_url_like(str(url_or_file_path)):
            raise refused(QueryError("Not an image", URL_MESSAGE))
        return await fetch(url_or_file_path)

    component.async_move_resource_to_block_cache = no_fetch
    return component


def uploaded_path(value) -> str | None:
    """Returns the path of the file a request uploaded: a FileData dict or the editor's {"background": ...}.

    Only files in Gradio's upload folder count (`webapp.guard.checked_upload`): a dict that names
    any other server path is refused with one message, whether that path exists or not.

    Raises:
        QueryError: a URL, a bare string, a path that is not an upload, or another value.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dict) and not value.get("path") and any(k in value for k in EDITOR_KEYS):
        return uploaded_path(value.get("composite") or value.get("background"))
    if isinstance(value, dict) and (value.get("meta") or {}).get("_type") == "gradio.FileData" and value.get("path"):
        try:
            return checked_upload(str(value["path"]))
        except NotUploaded as e:
            raise QueryError("Not an image", str(e)) from None
    if isinstance(value, str) and client_utils.is_http_url_like(value):
        raise QueryError("Not an image", URL_MESSAGE)
    raise QueryError("Not an image", NOT_UPLOADED)


def query_file() -> Api:
    """Returns the /search and /match endpoints' image input: a file, or the editor's {"background": file}."""
    schema = {**FileData.model_json_schema(), "additional_description": "a file (handle_file(path)), or the "
              "image editor's dict {\"background\": file}; not a URL"}
    return refuse_urls(Api(None, schema, label="query image"))


class Thumbnails:
    """The index's thumbnails and previews as files for Gradio to serve.

    Components get file paths, not PIL images: Gradio saves a PIL image to its cache by
    rewriting a file named after its content, which a concurrent request for the same thumbnail
    may be downloading at that moment (measured: truncated downloads with 20 clients). Files here
    are written once, atomically, and Gradio copies them into its cache atomically. Only files
    the app returns are served; this folder itself is not.
    """

    def __init__(self, index: Index, folder: Path):
        self.index = index
        self.folder = Path(folder)

    def jpeg(self, image_id: str) -> str:
        """Returns the path of the stored JPEG thumbnail (or the placeholder), for galleries."""
        return self._file(image_id, ".jpg", lambda: self.index.thumbnail(image_id) or self._placeholder_jpeg())

    def _placeholder_jpeg(self) -> bytes:
        buffer = io.BytesIO()
        self.image_placeholder().save(buffer, format="JPEG")
        return buffer.getvalue()

    @staticmethod
    def image_placeholder() -> Image.Image:
        """Returns the placeholder shown for an image without a thumbnail."""
        return Image.new("RGB", (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE * 3 // 4), (200, 200, 200))

    def preview(self, image_id: str) -> str:
        """Returns the path of the stored preview (the thumbnail when the index has none), for the editor."""
        return self._file(image_id, ".preview.jpg", lambda: self.index.preview(image_id) or self._placeholder_jpeg())

    def is_unedited(self, image_id: str, path: str) -> bool:
        """Tells whether the file at `path` is, byte for byte, the preview the app put in the editor.

        This is how a search knows its query is still that index image: an upload, even of the same
        photo, is another file. The editor's change events cannot tell, as the app sets its value too.
        """
        try:
            return Path(path).read_bytes() == self.index.preview(image_id)
        except OSError:
            return False

    def _file(self, image_id: str, suffix: str, data) -> str:
        # Named by row: ids are paths under the image folder and must not become file names.
        path = self.folder / f"{self.index.row_of(image_id)}{suffix}"
        if not path.exists():
            fd, staging = tempfile.mkstemp(dir=self.folder, suffix=suffix)
            with os.fdopen(fd, "wb") as f:
                f.write(data())
            os.replace(staging, path)
        return str(path)


def result_gallery(thumbnails: Thumbnails, result) -> list[tuple[str, str]]:
    """Returns (thumbnail file, caption) pairs; a caption reads "#rank · score" over the image id."""
    return [
        (thumbnails.jpeg(image_id), f"#{rank} · {score:.3f}\n{image_id}")
        for rank, (image_id, score) in enumerate(zip(result.ids, result.scores), 1)
    ]


def inline_jpeg(image: Image.Image, side: int, alt: str) -> str:
    """Returns an <img> of `image` scaled to at most `side` px, inline: no cache file to race on."""
    small = image.copy()
    small.thumbnail((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{alt}">'


def preview_html(image: Image.Image | None) -> str:
    """Returns a small inline picture of the query as searched, with its size in pixels."""
    if image is None:
        return ""
    return (f'<figure class="searched">{inline_jpeg(image, PREVIEW_SIDE, "the query as searched")}'
            f"<figcaption>Query as searched: {image.width} × {image.height} px</figcaption></figure>")


def share_query(source: str | None, box_text: str | None, k: int, searched: dict | None) -> str:
    """Returns the "?id=..&k=..&box=.." query of a search on an unedited index image, else ""."""
    if not source or not searched or searched.get("id") != source:
        return ""
    params = {"id": source, "k": int(k)}
    box = parse_box(box_text)
    if box is not None:
        params["box"] = ",".join(str(v) for v in box)
    return "?" + urlencode(params)


class Gate:
    """The engine's budget shared by the Gradio queue and the plain HTTP endpoint.

    At most `concurrency` queries run at once, whichever way they came in; HTTP callers beyond
    `max_waiting` get "busy" at once instead of piling up behind the UI's queue.
    """

    def __init__(self, concurrency: int, max_waiting: int):
        self._running = threading.BoundedSemaphore(max(1, concurrency))
        self._lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = max_waiting

    def __enter__(self):
        self._running.acquire()
        return self

    def __exit__(self, *exc):
        self._running.release()

    def try_wait(self) -> bool:
        """Counts one more HTTP caller waiting; False when `max_waiting` already wait."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                return False
            self._waiting += 1
            return True

    def done_waiting(self) -> None:
        with self._lock:
            self._waiting -= 1


def run_query(engine: SearchEngine, thumbnails: Thumbnails, image, k=DEFAULT_K, box: str | None = "",
              source: str | None = None, *, gate: Gate | None = None):
    """Runs one query and returns (SearchResult, searched) where searched = {"id", "image"}.

    Args:
        image: a path of an uploaded file, encoded bytes or a PIL image; None for none.
        k: how many results; box: optional "x0,y0,x1,y1" crop in pixels of the image.
        source: the index id of the image the app put in the editor, when it did (UI state).
        gate: held while the engine works.

    Raises:
        QueryError: no image, an unusable image, a bad K or box, or an empty crop.
    """
    k = check_k(engine, k)
    parsed_box = parse_box(box)
    if image is None:
        raise QueryError("No image", NO_IMAGE)
    unedited = (source is not None and source in engine.index and isinstance(image, str)
                and thumbnails.is_unedited(source, image))
    # Decoding is the costliest step in memory (about 0.9 GB for a 99-megapixel PNG): under the gate,
    # so that no two run at once, whichever way the queries came in.
    with gate or nullcontext():
        picture = decode_query(image)
        searched = {"id": source if unedited else None, "image": picture}
        if unedited and parsed_box is None:
            # A whole index image: its stored descriptor is the exact one, made from the full-size photo.
            return engine.search_id(source, k), searched
        try:
            if parsed_box is not None:
                picture = crop_box(picture, parsed_box)
        except ImageError as e:
            raise QueryError("Empty crop", f"The crop is empty: {e}.") from None
        if max(picture.size) > QUERY_MAX_SIDE:
            picture.thumbnail((QUERY_MAX_SIDE, QUERY_MAX_SIDE), Image.BILINEAR)  # in place: no second full copy
        searched["image"] = picture
        # A whole file goes to the engine as it came, to be decoded as the build decoded it: an indexed
        # photo sent as a query then has its indexed descriptor, and comes first (SearchEngine.duplicate_row).
        whole_file = parsed_box is None and isinstance(image, (str, bytes))
        try:
            return engine.search(image if whole_file else picture, k), searched
        except ImageError as e:
            raise QueryError("Not a usable image", f"This image cannot be searched: {e}.") from None


def timings_of(result, engine: SearchEngine) -> dict:
    """Returns {"embed_ms", "search_ms", "total_ms", "runtime"} of a SearchResult, rounded to 0.01 ms."""
    return {
        "embed_ms": round(result.embed_ms, 2),
        "search_ms": round(result.search_ms, 2),
        "total_ms": round(result.embed_ms + result.search_ms, 2),
        "runtime": engine.network.runtime,  # what ran the network (retrieval.networks.RUNTIMES)
    }


def search(engine: SearchEngine, thumbnails: Thumbnails, image, k=DEFAULT_K, box: str | None = "",
           source: str | None = None, *, gate: Gate | None = None):
    """Runs one query for the UI; returns (gallery, [{rank, id, score}], timings, searched).

    Raises:
        gr.Error: the query is refused (see `run_query`); logged as one line.
    """
    try:
        result, searched = run_query(engine, thumbnails, image, k, box, source, gate=gate)
    except QueryError as e:
        raise refused(e) from None
    return result_gallery(thumbnails, result), result.to_records(), timings_of(result, engine), searched


def search_ui(engine: SearchEngine, thumbnails: Thumbnails, gate: Gate, image, k, box, source):
    """Runs the UI's query: `image` is the editor's value, unprocessed (see `uploaded_path`)."""
    try:
        path = uploaded_path(image)
    except QueryError as e:
        raise refused(e) from None
    return search(engine, thumbnails, path, k, box, source, gate=gate)


def search_api(engine: SearchEngine, thumbnails: Thumbnails, gate: Gate, image, k=DEFAULT_K, box=""):
    """Finds the k indexed images most similar to `image`, cropped to `box`; the endpoint /search.

    Args:
        image: an image file (handle_file(path)), or the image editor's dict {"background": file}.
        k: how many results, 1 to 100 (default 20).
        box: optional crop "x0,y0,x1,y1" in pixels of the image (default: the whole image).

    Returns:
        (gallery of (thumbnail, caption), [{rank, id, score}], {"embed_ms", "search_ms", "total_ms"}).
    """
    try:
        path = uploaded_path(image)
    except QueryError as e:
        raise refused(e) from None
    return search(engine, thumbnails, path, k, box, gate=gate)[:3]


def match(engine: SearchEngine, thumbnails: Thumbnails, picture: Image.Image, image_id: str, *,
          gate: Gate | None = None):
    """Returns (side-by-side picture, "N matching points") of a query as searched and an index image."""
    if image_id not in engine.index:
        raise QueryError("Unknown image", f"{str(image_id)[:80]!r} is not in this index.")
    with gate or nullcontext():
        view = match_view(picture, engine.index.preview(image_id))
    return view.image, view.count


def match_api(engine: SearchEngine, thumbnails: Thumbnails, gate: Gate, image, box="", id=""):  # noqa: A002
    """Shows why an index image matched a query: both side by side, geometrically consistent matches drawn.

    Args:
        image: the query, as for /search; box: the same optional crop.
        id: the index id of the result to explain.

    Returns:
        (the picture, {"id", "matches"}): matches is the number of local-feature matches that agree
        on one geometry (RANSAC inliers of a homography, as retrieval/verify.py counts them).
    """
    try:
        path, parsed = uploaded_path(image), parse_box(box)
        if path is None:
            raise QueryError("No image", NO_IMAGE)
        with gate or nullcontext():
            picture = decode_query(path)
            if parsed is not None:
                picture = crop_box(picture, parsed)
        view, count = match(engine, thumbnails, picture, id, gate=gate)
    except ImageError as e:
        raise refused(QueryError("Empty crop", f"The crop is empty: {e}.")) from None
    except QueryError as e:
        raise refused(e) from None
    return view, {"id": id, "matches": count}


def show_match(engine: SearchEngine, thumbnails: Thumbnails, gate: Gate, searched: dict | None, records,
               evt: gr.SelectData):
    """Opens the match view for the selected result: the picture and its count line."""
    if not searched or not records or not 0 <= evt.index < len(records):
        return gr.update(visible=False), ""
    image_id = records[evt.index]["id"]
    try:
        view, count = match(engine, thumbnails, searched["image"], image_id, gate=gate)
    except QueryError as e:
        raise refused(e) from None
    return (gr.update(value=view, visible=True),
            f"**{count} matching points** between the query and #{evt.index + 1} `{image_id}`: local features "
            "that agree on one geometry (SIFT, RANSAC).")


def describe(timings: dict | None, searched: dict | None, source: str | None, box: str | None, k: float):
    """Returns the query-time line, the query as searched, the ?id= link and which share control shows."""
    if not timings:
        return "", "", gr.update(value="", visible=False), gr.update(visible=False)
    if searched and searched.get("id") and not (box or "").strip():
        line = (f"**Query time {timings['total_ms']:.1f} ms**: search {timings['search_ms']:.1f} ms"
                " (an index image: its stored descriptor needs no embedding)")
    else:
        line = (f"**Query time {timings['total_ms']:.1f} ms**: embedding {timings['embed_ms']:.1f} ms"
                f" ({timings.get('runtime', 'keras')}) + search {timings['search_ms']:.1f} ms")
    try:
        link = share_query(source, box, k, searched)
    except QueryError:
        link = ""
    # One share control: the short ?id= link for an index image, Gradio's deep link for anything else.
    return (line, preview_html(searched.get("image") if searched else None),
            gr.update(value=link, visible=bool(link)), gr.update(visible=not link))


def check_upload(value: dict | None, gate: Gate | None = None):
    """Checks an upload as it arrives: an unusable file is said so at once and cleared from the editor.

    The decoding waits for the gate, as a search does: uploads do not decode side by side.
    """
    try:
        path = uploaded_path(value)
        if path is not None:
            with gate or nullcontext():
                decode_query(path)
    except QueryError as e:
        log.info("refused upload: %s: %s", e.title, e)
        gr.Warning(str(e), title=e.title)
        return None, "", None
    return gr.update(), "", None


def read_link(engine: SearchEngine, params: dict) -> dict | None:
    """Returns the query {"id", "k", "box"} that ?id=&k=&box= in a page address describe, or None.

    Nothing from the address is ever used as a path: the id must be an index id, k a number in
    range, box four integers. A bad k or box is replaced (with a warning); a bad id gives None.
    """
    image_id = params.get("id")
    if not image_id:
        return None
    if image_id not in engine.index:
        gr.Warning(f"The link names an image that is not in this index ({image_id[:80]!r}).", title="Unknown image")
        return None
    k = min(DEFAULT_K, max_k(engine))
    if "k" in params:
        try:
            k = int(params["k"])
        except ValueError:
            k = -1
        if not 1 <= k <= max_k(engine):
            k = min(DEFAULT_K, max_k(engine))
            gr.Warning(f"k must be a whole number from 1 to {max_k(engine)}; using {k}.", title="Bad k")
    box = params.get("box", "")
    try:
        parse_box(box)
    except QueryError:
        gr.Warning(f"Ignoring the box {box[:80]!r}: it must be four whole numbers x0,y0,x1,y1.", title="Bad box")
        box = ""
    return {"id": image_id, "k": k, "box": box}


def run_link(engine: SearchEngine, thumbnails: Thumbnails, gate: Gate, link: dict):
    """Returns new values for the editor, k, box and source, then the outputs of `search` and `describe`."""
    image_id, k, box = link["id"], link["k"], link["box"]
    shown = thumbnails.preview(image_id)
    outputs = search(engine, thumbnails, shown, k, box, image_id, gate=gate)
    return (shown, k, box, image_id, *outputs, *describe(outputs[2], outputs[3], image_id, box, k))


def pick_example(thumbnails: Thumbnails, examples: list[str], evt: gr.SelectData):
    """Loads the selected example (an index image) into the editor, as its sharp preview."""
    image_id = examples[evt.index]
    return thumbnails.preview(image_id), "", image_id


def max_k(engine: SearchEngine) -> int:
    """Returns the largest K offered: 100, or the index size when smaller."""
    return max(1, min(MAX_K, len(engine)))


def example_ids(index: Index, n: int = N_EXAMPLES) -> list[str]:
    """Returns n index ids spread evenly over the index."""
    count = len(index)
    n = min(n, count)  # an index smaller than n shows each image once
    return [str(index.ids[i * count // n]) for i in range(n)]


def build_demo(engine: SearchEngine, thumbnails: Thumbnails, *, concurrency: int = CONCURRENCY_LIMIT,
               gate: Gate | None = None) -> gr.Blocks:
    """Returns the interface: query, K, box and examples on the left, results and match view on the right."""
    index = engine.index
    gate = gate or Gate(concurrency, QUEUE_MAX_SIZE)
    examples = example_ids(index)
    pipeline = index.meta.get("pipeline", {})
    engine_limit = dict(concurrency_limit=concurrency, concurrency_id="engine")
    with gr.Blocks(title="Landmark image search", delete_cache=DELETE_CACHE) as demo:
        source = gr.State(None)  # the index id of the image last put in the editor by the app
        searched = gr.State(None)
        link = gr.State(None)  # the query a shared link asks for
        gr.Markdown(
            INTRO.format(network=index.meta["network"], pooling=pipeline.get("pooling", "?"), count=len(index),
                         runtime=engine.network.runtime,
                         rerank=RERANK_DIFFUSION if index.meta.get("diffusion") else ""),
            elem_id="intro",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                query = gr.Image(label="Query image: drag on it to select a region", type="filepath",
                                   sources=("upload", "clipboard"), height=380, buttons=[], elem_id="query")
                with gr.Row():
                    k = gr.Slider(1, max_k(engine), value=min(DEFAULT_K, max_k(engine)), step=1,
                                  label="Results (K)", elem_id="k", scale=3)
                    box = gr.Textbox(label="Box (drag on the image, or type)", placeholder="x0,y0,x1,y1",
                                     max_lines=1, elem_id="box", scale=2)
                button = gr.Button("Search", variant="primary", elem_id="search")
                gr.Markdown("**Examples from the index**: click one to search with it", elem_id="examples-title")
                example_gallery = gr.Gallery(
                    [thumbnails.jpeg(i) for i in examples],
                    label="Examples from the index",
                    columns=4, height="auto", allow_preview=False, show_label=False,
                    buttons=[], elem_id="examples",
                )
            with gr.Column(scale=3, min_width=360):
                timing = gr.Markdown("", elem_id="timing")
                results = gr.Gallery(label="Most similar images", show_label=False, columns=4, height="auto",
                                     object_fit="cover", format="jpeg", allow_preview=False, buttons=[],
                                     elem_id="results")
                gr.Markdown("<small>Click a result to see why it matched.</small>", elem_id="match-hint")
                match_text = gr.Markdown("", elem_id="match-count")
                match_picture = gr.Image(label="Why it matched", type="pil", format="jpeg", interactive=False,
                                         visible=False, buttons=["fullscreen"], elem_id="match")
                with gr.Row():
                    share = gr.Textbox(label="Link to this query", interactive=False, buttons=["copy"],
                                       visible=False, elem_id="share", scale=4)
                    deep = gr.DeepLinkButton("Link to this page", copied_value="Link copied", visible=False,
                                             elem_id="deep-link", scale=1)
                with gr.Row():
                    preview = gr.HTML("", elem_id="searched")
                    with gr.Accordion("Results as JSON", open=False, elem_id="json-accordion"):
                        records = gr.JSON(label="Results", elem_id="records")
                timings = gr.JSON(label="Timings", visible=False, elem_id="timings")
                match_info = gr.JSON(visible=False)

        run = partial(search_ui, engine, thumbnails, gate)
        show = dict(fn=describe, inputs=[timings, searched, source, box, k],
                    outputs=[timing, preview, share, deep], api_visibility="private", queue=False)
        full_link = dict(fn=None, js=SHARE_JS, inputs=share, outputs=share, api_visibility="private", queue=False)
        # preprocess=False: the handlers decode the editor's file themselves (see `decode_query`).
        search_io = dict(inputs=[query, k, box, source], outputs=[results, records, timings, searched],
                         preprocess=False)
        gr.on([button.click, box.submit], run, **search_io, api_visibility="private", **engine_limit,
              trigger_mode="always_last").success(**show).success(**full_link)
        def on_upload(value):
            return check_upload(value, gate)

        query.upload(on_upload, inputs=query, outputs=[query, box, source], api_visibility="private",
                     concurrency_limit=None, preprocess=False)
        query.clear(lambda: ("", None), outputs=[box, source], api_visibility="private", queue=False)

        def on_example(evt: gr.SelectData):
            return pick_example(thumbnails, examples, evt)

        def on_load(request: gr.Request):
            return read_link(engine, dict(request.query_params))

        def on_result(picked: dict | None, rows, evt: gr.SelectData):
            return show_match(engine, thumbnails, gate, picked, rows, evt)

        example_gallery.select(on_example, outputs=[query, box, source],
                               api_visibility="private", queue=False).success(
            run, **search_io, api_visibility="private", **engine_limit,
        ).success(**show).success(**full_link)
        results.select(on_result, inputs=[searched, records], outputs=[match_picture, match_text],
                       api_visibility="private", **engine_limit)
        # A page address with ?id= sets `link`, whose change runs the query. Without one nothing
        # runs, so a Gradio deep link (?deep_link=) keeps the values it restored.
        demo.load(on_load, outputs=link, api_visibility="private", concurrency_limit=None)
        link.change(partial(run_link, engine, thumbnails, gate), inputs=link,
                    outputs=[query, k, box, source, results, records, timings, searched, timing, preview, share,
                             deep],
                    api_visibility="private", **engine_limit).success(**full_link)

        # The public API: its own inputs, so that it takes a plain file, has k and box optional, and
        # never fetches a URL (see `refuse_urls`).
        api_k = Api(min(DEFAULT_K, max_k(engine)), {"type": "integer"}, label="k")
        api_box = Api("", {"type": "string"}, label="box")
        # What gr.api does, with our own input components: gr.api would build plain ones.
        config = get_blocks_context()
        config.set_event_trigger(
            [], partial(search_api, engine, thumbnails, gate), [query_file(), api_k, api_box],
            [results, records, timings], api_name="search", api_description=search_api.__doc__.split("\n")[0],
            **engine_limit)
        config.set_event_trigger(
            [], partial(match_api, engine, thumbnails, gate),
            [query_file(), Api("", {"type": "string"}, label="box"), Api("", {"type": "string"}, label="id")],
            [match_picture, match_info], api_name="match", api_description=match_api.__doc__.split("\n")[0],
            **engine_limit)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--index", type=Path, help="an index folder (default: the embedded one, ./index)")
    source.add_argument("--images", type=Path, help="a folder of images to index, then serve")
    parser.add_argument("--out", type=Path, help="with --images: where the index goes (default: indexes/<folder>)")
    parser.add_argument("--network", default="efficientnet-b7",
                        help="with --images: efficientnet-b7 or efficientnet-lite0 (works offline)")
    parser.add_argument("--weights", default="imagenet", help="with --images: imagenet or a weights file")
    parser.add_argument("--runtime", default="auto",
                        help="what runs the network: auto (default: onnxruntime if it loads, else keras; openvino "
                        "for bfloat16), onnxruntime, openvino, keras")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: openvino's reduced-precision inference (faster, less exact)")
    parser.add_argument("--runtime-cache", type=Path, default=RUNTIME_CACHE,
                        help=f"folder of converted networks, reused across starts (default {RUNTIME_CACHE})")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY_LIMIT,
                        help=f"searches run at once (default {CONCURRENCY_LIMIT}, measured best on 2 cores)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return parser.parse_args(argv)


def open_index(args: argparse.Namespace, environ) -> Index:
    """Returns the index to serve, from the first source given: --index, --images (indexed here
    first), INDEX_REPO (at INDEX_REVISION), else the embedded ./index.

    The command line comes before the environment, so that a Space's INDEX_REPO setting does
    not override an explicit local run.
    """
    if args.index is not None:
        return load_index(args.index)
    if args.images is not None:
        out = args.out or Path("indexes") / f"{args.images.resolve().name}-{args.network}"
        return load_index(build_from_images(args.images, out, args.network, args.weights, runtime_kwargs(args)))
    if environ.get("INDEX_REPO"):
        return pull_index(environ["INDEX_REPO"], revision=environ.get("INDEX_REVISION") or None)
    if DEFAULT_INDEX.is_dir():
        return load_index(DEFAULT_INDEX)
    raise SystemExit(NO_INDEX_MESSAGE.format(default=DEFAULT_INDEX))


def build_from_images(images: Path, out: Path, network_name: str, weights: str, runtime: dict | None = None) -> Path:
    """Indexes `images` into `out`, reusing what an earlier run there already did; returns `out`."""
    from tqdm import tqdm

    from retrieval.build import build_index
    from retrieval.defaults import DEFAULT

    print(f"Indexing {images} into {out} with {network_name}", file=sys.stderr, flush=True)
    with tqdm(total=0, unit="img", desc="embedding", dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        from retrieval.networks import build_network

        network = build_network(network_name, weights=weights, **(runtime or {}))
        report = build_index(images, out, network, DEFAULT.descriptor,
                             dba=DEFAULT.dba, qe=DEFAULT.qe, alpha=DEFAULT.alpha, diffusion=DEFAULT.diffusion,
                             progress=progress, log=tqdm.write)
    print(f"{report.count} images ({report.embedded} embedded, {report.reused} reused, "
          f"{len(report.skipped)} skipped)", file=sys.stderr, flush=True)
    return out


def runtime_kwargs(args: argparse.Namespace) -> dict:
    """Returns build_network's runtime, precision and cache_dir from the parsed options."""
    return {"runtime": args.runtime, "precision": args.precision, "cache_dir": args.runtime_cache}


def load_engine(index: Index, runtime: dict | None = None) -> SearchEngine:
    """Returns a warmed-up engine over `index`, with the network recorded in it, run by the runtime
    that `runtime` (build_network's runtime, precision and cache_dir) names."""
    from retrieval.networks import build_network  # TensorFlow: imported once the port and the index are known

    network = build_network(index.meta["network"], weights=index.meta["weights"], **(runtime or {}))
    print(network.describe(), file=sys.stderr, flush=True)
    engine = SearchEngine(index, network)
    engine.warm_up()
    return engine


HTTP_STATUS = {"Not a usable image": 415, "Too large": 413, "Busy": 503}
# Plain HTTP callers admitted at once: the rest get 503 without a byte of their body read. Each one
# admitted holds its upload (at most MAX_FILE_BYTES) and a thread while it waits for the gate; 16
# bound that to 320 MB, and 16 queries are a few seconds of work (benchmarks.abuse; docs/app.md, "What a stranger can send").
HTTP_MAX_WAITING = 16
# A request body may carry one file of MAX_FILE_BYTES and a little multipart framing; an address
# (path or query string) 8 KiB, as most servers allow.
MAX_BODY_BYTES = MAX_FILE_BYTES + 256 * 1024
MAX_URL_BYTES = 8 * 1024


def http_search(engine: SearchEngine, thumbnails: Thumbnails, gate: Gate, data: bytes | None, k, box, *,
                admitted: bool = False) -> tuple[int, dict]:
    """Runs one query of the plain HTTP endpoint; returns (status, JSON body).

    The same checks and messages as /search; errors are {"error", "title"} with an HTTP status.
    `admitted`: the caller already holds a place in the gate's waiting room (see `add_http_api`).
    """
    try:
        if data is not None and len(data) > MAX_FILE_BYTES:
            raise QueryError("Too large", f"The file is over the {MAX_FILE_SIZE} upload limit.")
        if not admitted and not gate.try_wait():
            raise QueryError("Busy", busy_message(gate))
        try:
            k = int(k) if str(k).strip().isascii() and str(k).strip().isdigit() else k  # not "²"
            result, _ = run_query(engine, thumbnails, data or None, k, box, gate=gate)
        finally:
            if not admitted:
                gate.done_waiting()
    except QueryError as e:
        return http_error(e)
    return 200, {"results": result.to_records(), "timings": timings_of(result, engine)}


def busy_message(gate: Gate) -> str:
    return f"{gate.max_waiting} queries are already waiting; try again in a moment."


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
            raise QueryError("No image", f"The file must be sent as the multipart field \"image\", not "
                             f"{others[0][:40]!r} (curl -F image=@photo.jpg).")
        return None
    if not isinstance(image, StarletteUpload):
        raise QueryError("No image", "The field \"image\" must be a file, not text (curl -F image=@photo.jpg).")
    return image


def add_http_api(app, engine: SearchEngine, thumbnails: Thumbnails, gate: Gate) -> None:
    """Adds POST /api/search?k=&box= with a multipart "image" file: [{rank, id, score}] and timings in one request.

    A caller beyond the gate's `max_waiting` admitted ones gets 503 at once, before its body is
    read; the admitted ones wait for the gate in threads of their own, not in the server's shared pool.
    """
    import anyio
    from fastapi.exceptions import RequestValidationError

    gate = gate
    threads = anyio.CapacityLimiter(max(1, gate.max_waiting))

    @app.post("/api/search")
    async def api_search(request: fastapi.Request, k: str | None = Query(None), box: str = Query("")):
        if not gate.try_wait():
            status, body = http_error(QueryError("Busy", busy_message(gate)))
            return JSONResponse(body, status_code=status, headers={"Retry-After": "1"})
        try:
            try:
                image = await read_image_field(request)
                data = None if image is None else await image.read(MAX_FILE_BYTES + 1)
            except QueryError as e:
                status, body = http_error(e)
                return JSONResponse(body, status_code=status)
            k = min(DEFAULT_K, max_k(engine)) if k is None else k  # as /search: 20, or every image of a smaller index
            status, body = await anyio.to_thread.run_sync(
                partial(http_search, engine, thumbnails, gate, data, k, box, admitted=True), limiter=threads)
            return JSONResponse(body, status_code=status)
        finally:
            gate.done_waiting()

    @app.get("/api/search")
    def api_search_get():
        status, body = http_error(QueryError(
            "Use POST", "Search with POST /api/search and the image as the multipart field \"image\" "
            "(curl -F image=@photo.jpg 'http://HOST/api/search?k=10')."))
        return JSONResponse(body, status_code=405, headers={"Allow": "POST"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):  # never FastAPI's 422, which echoes the input back
        status, body = http_error(QueryError("Bad request", "The request is not what this endpoint takes: "
                                             "POST /api/search?k=&box= with the multipart field \"image\"."))
        return JSONResponse(body, status_code=status)


def bind(host: str, port: int) -> socket.socket:
    """Returns a socket bound to host:port, for the server to listen on once the index is loaded.

    Bound first, before anything slow: a port in use is said at once, and nothing claims to serve.

    Raises:
        SystemExit: the port cannot be had; one line, exit status 1.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise SystemExit(f"Cannot serve on {host}:{port}: {e.strerror or e}. Is another program using it? "
                         "Choose another with --port.") from None
    return sock


def serve(engine: SearchEngine, *, sock: socket.socket, concurrency: int) -> None:
    """Serves the UI, its Gradio API and the plain HTTP endpoint on one port, sharing one engine budget.

    The thumbnail folder is removed however the server stops: Ctrl-C, SIGTERM (as a Space stops
    it) or an error.
    """
    folder = Path(tempfile.mkdtemp(prefix="landmark-thumbnails-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    # uvicorn re-raises the signal that stopped it; as SystemExit, not the default handler's
    # immediate exit, it runs the `finally` below and the atexit handlers.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        thumbnails = Thumbnails(engine.index, folder)
        gate = Gate(concurrency, HTTP_MAX_WAITING)
        demo = build_demo(engine, thumbnails, concurrency=concurrency, gate=gate)
        demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=concurrency)
        app = fastapi.FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        add_http_api(app, engine, thumbnails, gate)  # before the mount, which takes every other path
        app = gr.mount_gradio_app(
            app, demo, path="", max_file_size=MAX_FILE_SIZE, allowed_paths=[], ssr_mode=False, show_error=False,
            footer_links=["api", "gradio"], css=CSS, theme=gr.themes.Soft(), js=DRAG_JS,
        )
        # Gradio checks that inputs are uploads and outputs allowed files only once it has
        # launched, which mounting never says: say it, so its own checks run too.
        demo.has_launched = True
        refuse_non_uploads_in_our_words()
        guarded = RequestLimits(app, max_body=MAX_BODY_BYTES, max_url=MAX_URL_BYTES)
        host, port = sock.getsockname()[:2]
        print(f"Serving on http://{host}:{port} (HTTP API: POST /api/search)", file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn.Config(guarded, log_level="warning")).run(sockets=[sock])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    sock = bind(args.host, args.port)
    return_freed_memory()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices, unless chosen
    from retrieval.networks import NetworkError  # imports TensorFlow: after the port is ours

    started = time.perf_counter()
    try:
        engine = load_engine(open_index(args, os.environ), runtime_kwargs(args))
    except (IndexFormatError, FileNotFoundError, NetworkError, BuildError, HubError) as e:
        raise SystemExit(f"Cannot serve this index: {e}") from None
    except OSError as e:  # a full disk, a read-only or forbidden folder while indexing --images
        raise SystemExit(f"Cannot serve this index: {os_message(e)}") from None
    print(f"Loaded {len(engine)} images in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    serve(engine, sock=sock, concurrency=args.concurrency)


if __name__ == "__main__":
    main()
