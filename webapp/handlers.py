"""The Gradio handlers: the page's search, /search, /match, the match view of a result, the upload check and examples.

Each takes the `AppContext` first; `webapp.links` holds the handlers of page links.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from retrieval.matchview import match_view
from webapp import queries
from webapp.context import AppContext
from webapp.messages import NO_CONFIDENT_MATCH, QueryError, no_image, unknown_image
from webapp.queries import DEFAULT_K, log, parse_box, refused, run_query, uploaded_path
from webapp.records import confidence_of, records_of, timings_of
from webapp.thumbnails import preview_html, result_gallery


def search(ctx: AppContext, image, k=DEFAULT_K, box: str | None = "", source: str | None = None, root: str = ""):
    """Runs one query for the page; returns (gallery, records, timings, searched).

    `searched` also holds the answer's confidence ({"confident", "evidence"}), for `describe`
    (`run_query` puts it there, so a link's query has it too).

    Args:
        root: the app's address as the caller sees it, for the records' image URLs (`webapp.records.root_url`).

    Raises:
        gr.Error: the query is refused (see `run_query`); logged as one line.
    """
    try:
        result, searched = run_query(ctx, image, k, box, source)
    except QueryError as e:
        raise refused(e) from None
    return (result_gallery(ctx.thumbnails, result), records_of(result, root), timings_of(result, ctx.engine),
            searched)


def search_ui(ctx: AppContext, image, k, box, source, root: str = ""):
    """Runs the page's query: `image` is the editor's value, unprocessed (see `uploaded_path`)."""
    try:
        path = uploaded_path(image)
    except QueryError as e:
        raise refused(e) from None
    return search(ctx, path, k, box, source, root)


def search_again(ctx: AppContext, image, k, box, source, searched: dict | None, root: str = ""):
    """Searches again with the new K when the page shows results and the editor holds an image; else changes nothing."""
    if not searched or image is None:
        return (gr.skip(),) * 4
    return search_ui(ctx, image, k, box, source, root)


def search_api(ctx: AppContext, image, k=DEFAULT_K, box="", root: str = ""):
    """Finds the k indexed images most similar to `image`, cropped to `box`; the endpoint /search.

    The same search over plain HTTP: POST /api/search?k=&box= with the multipart field "image".

    Args:
        image: an image file (handle_file(path)), or the image editor's dict {"background": file}.
        k: how many results, 1 to 100 (default 20).
        box: optional crop "x0,y0,x1,y1" in pixels of the image (default: the whole image).

    Returns:
        (results, timings, confidence): results is [{rank, id, score, similarity, thumbnail,
        preview}], best first: similarity is the cosine of the query and the image, score the
        ranking score (αQE, diffusion) that orders the list, thumbnail and preview the URLs of the
        image's stored 192-px thumbnail and larger preview; timings is {"embed_ms", "search_ms",
        "total_ms", "runtime"}; confidence is {"confident", "evidence"}: confident is false when the
        collection holds no confident match (the results are then the most similar photos), null
        where no threshold was measured for the index. No file to download.
    """
    try:
        result, _ = run_query(ctx, uploaded_path(image), k, box)
    except QueryError as e:
        raise refused(e) from None
    return records_of(result, root), timings_of(result, ctx.engine), confidence_of(result)


def match(ctx: AppContext, picture: Image.Image, image_id: str):
    """Returns (side-by-side picture, number of matching points) of a query as searched and an index image."""
    if image_id not in ctx.index:
        raise unknown_image(image_id)
    with ctx.gate:
        view = match_view(picture, ctx.index.preview(image_id))
    return view.image, view.count


def match_api(ctx: AppContext, image, box="", id=""):  # noqa: A002
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
            raise no_image()
        with ctx.gate:
            picture = queries.decode_query(path)
            if parsed is not None:
                picture = queries.crop_query(picture, parsed)
        view, count = match(ctx, picture, id)
    except QueryError as e:
        raise refused(e) from None
    return view, {"id": id, "matches": count}


def match_line(count: int, image_id: str, rank: int | None) -> str:
    """Returns the line under the match view: how many points matched, and what that number means."""
    which = f"#{rank} `{image_id}`" if rank else f"`{image_id}`"
    if count == 0:
        return (f"**0 matching points** between the query and {which}: no detail of the query was found again "
                "in this photo in the same arrangement. It was ranked by its overall look (one descriptor of the "
                "whole image), not by shared details: it may show the place from afar or from another side, in "
                "other light, or only look alike.")
    return (f"**{count} matching point{'s' if count != 1 else ''}** between the query and {which}: details "
            "found in both photos (SIFT) that agree on one geometry (RANSAC), joined by lines.")


def open_result(ctx: AppContext, image_id: str | None, records):
    """Opens the match panel on an index image at once, before its match view is computed.

    Returns updates for (the panel, its title, the image at its largest stored size, the line under
    the match view, the match view, the share link) and the id now shown (None: nothing to open).
    """
    if not image_id or image_id not in ctx.index:
        return (gr.update(visible=False), "", None, "", gr.update(value=None, visible=False), gr.update(),
                None)
    row = next((r for r in records or [] if r.get("id") == image_id), None)
    path = ctx.thumbnails.preview(image_id)
    with Image.open(path) as shown:
        width, height = shown.size
    title = f"### #{row['rank']} `{image_id}` · similarity {row['similarity']:.3f}" if row else f"### `{image_id}`"
    title += f"\n<small>Shown at its largest stored size, {width} × {height} px.</small>"
    return (gr.update(visible=True), title, path, "*Finding the matching points…*",
            gr.update(value=None, visible=False), gr.update(value="", visible=False), image_id)


def pick_result(ctx: AppContext, records, evt: gr.SelectData):
    """The results gallery's click: `open_result` on the clicked result."""
    image_id = records[evt.index]["id"] if records and 0 <= evt.index < len(records) else None
    return open_result(ctx, image_id, records)


def show_match(ctx: AppContext, searched: dict | None, image_id: str | None, records=None):
    """Returns (the match view, its line) of the query as searched and the index image shown in the panel."""
    if not searched or not image_id:
        return gr.update(value=None, visible=False), ""
    try:
        view, count = match(ctx, searched["image"], image_id)
    except QueryError as e:
        raise refused(e) from None
    rank = next((r["rank"] for r in records or [] if r.get("id") == image_id), None)
    return gr.update(value=view, visible=True), match_line(count, image_id, rank)


def describe(timings: dict | None, searched: dict | None):
    """Returns, after a search, the line above the results (the no-confident-match notice, the query time),
    the query as searched, and updates that show the share button, hide an old share link and close the
    match panel (and forget which result it showed)."""
    share_button, share = gr.update(visible=bool(timings)), gr.update(value="", visible=False)
    closed = gr.update(visible=False)
    if not timings:
        return "", "", share_button, share, closed, None
    if searched and searched.get("id") and not searched.get("box"):
        line = (f"**Query time {timings['total_ms']:.1f} ms**: search {timings['search_ms']:.1f} ms"
                " (an index image: its stored descriptor needs no embedding)")
    else:
        line = (f"**Query time {timings['total_ms']:.1f} ms**: embedding {timings['embed_ms']:.1f} ms"
                f" ({timings.get('runtime', 'keras')}) + search {timings['search_ms']:.1f} ms")
    if searched and (searched.get("confidence") or {}).get("confident") is False:
        line = f"**{NO_CONFIDENT_MATCH}**\n\n" + line
    return line, preview_html(searched.get("image") if searched else None), share_button, share, closed, None


def check_upload(ctx: AppContext, value: dict | None):
    """Checks an upload as it arrives: an unusable file is said so at once and cleared from the editor.

    The decoding waits for the gate, as a search does: uploads do not decode side by side.
    """
    try:
        path = uploaded_path(value)
        if path is not None:
            with ctx.gate:
                queries.decode_query(path)
    except QueryError as e:
        log.info("refused upload: %s: %s", e.title, e)
        gr.Warning(str(e), title=e.title)
        return None, "", None
    return gr.update(), "", None


def pick_example(ctx: AppContext, evt: gr.SelectData):
    """Loads the selected example (an index image) into the editor, as its sharp preview."""
    image_id = ctx.examples[evt.index]
    return ctx.thumbnails.preview(image_id), "", image_id

