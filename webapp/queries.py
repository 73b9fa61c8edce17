"""What a query is and how it is checked and run: the image a request uploaded, K, the box, the search under the gate."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from gradio.components.api_component import Api
from gradio.data_classes import FileData
from gradio_client import utils as client_utils
from PIL import Image

from retrieval.engine import SearchEngine
from retrieval.features import ImageError, crop_box, load_image
from retrieval.search import SearchUnavailable
from webapp.context import AppContext
from webapp.guard import NotUploaded, checked_upload
from webapp.messages import (NOT_UPLOADED, URL_MESSAGE, QueryError, bad_box, bad_k, empty_crop, no_image, not_usable,
                             unavailable, unsearchable)
from webapp.records import confidence_of

DEFAULT_K = 20
MAX_K = 100


# Queries larger than this are downscaled before embedding: the network sees a few hundred
# pixels anyway, and a 48-megapixel phone photo would only cost time and memory.
QUERY_MAX_SIDE = 2048
EDITOR_KEYS = ("background", "composite", "layers")


log = logging.getLogger("landmark-search")


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
        raise bad_box(text)
    return box


def box_text(box: tuple[int, int, int, int] | None) -> str:
    """Returns a box as a link and the box field write it, "x0,y0,x1,y1", or "" for none."""
    return "" if box is None else ",".join(str(v) for v in box)


def check_k(engine: SearchEngine, k) -> int:
    """Returns k as an int when it is a whole number from 1 to `max_k`; raises QueryError otherwise."""
    try:
        whole = None if isinstance(k, bool) else int(k)  # True is not a count, as in Searcher.check_k
    except (TypeError, ValueError, OverflowError):
        whole = None
    if whole is None or isinstance(k, bool) or whole != k or not 1 <= whole <= max_k(engine):
        raise bad_k(k, max_k(engine))
    return whole


def decode_query(source, name: str = "the file", *, decode=None):
    """Returns the query image decoded by `decode` (`retrieval.features.load_image`: our pixel limit, our messages).

    Args:
        decode: `load_image` (the default: the image at full size), or `SearchEngine.decode` (a whole
            file as the build decodes it).

    Raises:
        QueryError: the file is not an image we can decode safely; the message names no path.
    """
    try:
        return (decode or load_image)(source)
    except (ImageError, OSError) as e:
        message = str(e).replace(str(source), name) if isinstance(source, (str, Path)) else str(e)
        raise not_usable(message) from None


def crop_query(picture: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Returns the box's region of the picture (clipped to it); raises QueryError when no pixel is left."""
    try:
        return crop_box(picture, box)
    except ImageError:
        raise empty_crop(box, picture.size) from None


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


def run_query(ctx: AppContext, image, k=DEFAULT_K, box: str | None = "", source: str | None = None):
    """Runs one query and returns (SearchResult, searched), searched = {"id", "image", "file", "box", "k", "confidence"}.

    The image is decoded once, under the gate: a whole file as the build decoded the index's photos
    (`SearchEngine.decode`: an indexed photo sent as a query then has its indexed descriptor, and
    comes first), a box cut from the image at full size. `searched` is the query as the page shows
    and shares it: the index id it was when unedited, the picture searched (at most 2048 px), the
    file it came from, the box, K, and the answer's confidence ({"confident", "evidence"}), which the
    line above the results reads however the query came (the page, a link).

    Args:
        image: a path of an uploaded file, encoded bytes or a PIL image; None for none.
        k: how many results; box: optional "x0,y0,x1,y1" crop in pixels of the image.
        source: the index id of the image the app put in the editor, when it did (UI state).

    Raises:
        QueryError: no image, an unusable image, a bad K or box, an empty crop, or a search backend
            that does not answer (Milvus out of reach).
    """
    engine = ctx.engine
    k = check_k(engine, k)
    parsed_box = parse_box(box)
    if image is None:
        raise no_image()
    unedited = (source is not None and source in engine.index and isinstance(image, str)
                and ctx.thumbnails.is_unedited(source, image))
    # Decoding is the costliest step in memory (about 0.9 GB for a 99-megapixel PNG): under the gate,
    # so that no two run at once, whichever way the queries came in.
    with ctx.gate:
        if parsed_box is None and isinstance(image, (str, bytes)):
            decoded = decode_query(image, decode=engine.decode)
            # A whole index image: its stored descriptor is the exact one, made from the full-size photo.
            result = answered(engine.search_id, source, k) if unedited else searched_by(engine, decoded, k)
            picture = fit(decoded.image)  # what the page keeps of a whole file, after it was searched whole
        else:
            picture = decode_query(image)
            if parsed_box is not None:
                picture = crop_query(picture, parsed_box)
            result = searched_by(engine, fit(picture), k)
    searched = {"id": source if unedited else None, "image": picture, "file": image if isinstance(image, str) else None,
                "box": box_text(parsed_box), "k": k, "confidence": confidence_of(result)}
    return result, searched


def fit(picture: Image.Image) -> Image.Image:
    """Returns the picture downscaled in place (no second full copy) to at most QUERY_MAX_SIDE a side."""
    if max(picture.size) > QUERY_MAX_SIDE:
        picture.thumbnail((QUERY_MAX_SIDE, QUERY_MAX_SIDE), Image.BILINEAR)
    return picture


def searched_by(engine: SearchEngine, image, k: int):
    """Returns engine.search(image, k), its refusal of an image said as a QueryError."""
    try:
        return answered(engine.search, image, k)
    except ImageError as e:
        raise unsearchable(str(e)) from None


def answered(search, *args):
    """Returns search(*args); a search backend that does not answer (Milvus out of reach) becomes a
    refusal with one clear message, logged with the backend's reason, and the app goes on."""
    try:
        return search(*args)
    except SearchUnavailable as e:
        log.warning("search backend unavailable: %s", e)
        raise unavailable() from None
