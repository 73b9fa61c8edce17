"""The Gradio handlers: the UI search, /search, /match, the match view of a result, the upload check, links and examples."""

from __future__ import annotations

from contextlib import nullcontext
from urllib.parse import urlencode

import gradio as gr
from PIL import Image

from retrieval.engine import SearchEngine
from retrieval.features import ImageError, crop_box
from retrieval.index import Index
from retrieval.matchview import match_view
from webapp import queries
from webapp.gate import Gate
from webapp.queries import (DEFAULT_K, NO_IMAGE, QueryError, log, max_k, parse_box, refused, run_query, timings_of,
                            uploaded_path)
from webapp.thumbnails import Thumbnails, preview_html, result_gallery

N_EXAMPLES = 8


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
            picture = queries.decode_query(path)
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


def share_query(source: str | None, box_text: str | None, k: int, searched: dict | None) -> str:
    """Returns the "?id=..&k=..&box=.." query of a search on an unedited index image, else ""."""
    if not source or not searched or searched.get("id") != source:
        return ""
    params = {"id": source, "k": int(k)}
    box = parse_box(box_text)
    if box is not None:
        params["box"] = ",".join(str(v) for v in box)
    return "?" + urlencode(params)


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
                queries.decode_query(path)
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


def example_ids(index: Index, n: int = N_EXAMPLES) -> list[str]:
    """Returns n index ids spread evenly over the index."""
    count = len(index)
    n = min(n, count)  # an index smaller than n shows each image once
    return [str(index.ids[i * count // n]) for i in range(n)]
