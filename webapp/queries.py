"""What a query is and how it is checked and run: the image a request uploaded, K, the box, the search under the gate."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import gradio as gr
from gradio.components.api_component import Api
from gradio.data_classes import FileData
from gradio_client import utils as client_utils
from PIL import Image

from retrieval.engine import SearchEngine
from retrieval.features import ImageError, crop_box, load_image
from webapp.gate import Gate
from webapp.guard import NOT_UPLOADED, NotUploaded, checked_upload
from webapp.thumbnails import Thumbnails

DEFAULT_K = 20
MAX_K = 100


# Queries larger than this are downscaled before embedding: the network sees a few hundred
# pixels anyway, and a 48-megapixel phone photo would only cost time and memory.
QUERY_MAX_SIDE = 2048
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


def max_k(engine: SearchEngine) -> int:
    """Returns the largest K offered: 100, or the index size when smaller."""
    return max(1, min(MAX_K, len(engine)))


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
