"""Page links: the address that brings a page back (query image, box, K, results, match view), and reading one.

    ?id=<index id>&k=8&box=20,20,200,200&match=<index id>   an index image as the query
    ?q=<token>&k=8&box=20,20,200,200&match=<index id>       an uploaded query the app keeps (`webapp.kept`)

Nothing from an address is ever used as a path: an id must be an index id, a token one the app
made, K a number in range, the box four integers with pixels of the image in it. What is wrong
in a link is left out with ONE warning; what is right is kept, and the page stays usable.
"""

from __future__ import annotations

from urllib.parse import urlencode

import gradio as gr

from webapp.context import AppContext
from webapp.handlers import open_result
from webapp.messages import QueryError
from webapp.queries import DEFAULT_K, max_k, parse_box, run_query
from webapp.records import records_of, timings_of
from webapp.thumbnails import result_gallery

LINK_KEYS = ("id", "q", "k", "box", "match")


def share_link(ctx: AppContext, searched: dict | None, shown: str | None) -> str:
    """Returns the "?id=.." or "?q=.." query of the page as it is: its query, K, box and the result in the panel.

    An uploaded query is kept (`AppContext.kept`) only now, when its link is asked for.

    Raises:
        gr.Error: the upload is no longer on the server, or the app keeps no uploads.
    """
    if not searched:
        return ""
    if searched.get("id"):
        params = {"id": searched["id"]}
    else:
        try:
            if ctx.kept is None or not searched.get("file"):
                raise OSError("not kept")
            params = {"q": ctx.kept.keep(searched["file"])}
        except OSError:
            raise gr.Error("This query image is no longer on the server: upload it again to share the page.",
                           title="No link", print_exception=False) from None
    params["k"] = searched["k"]
    if searched.get("box"):
        params["box"] = searched["box"]
    if shown:
        params["match"] = shown
    return "?" + urlencode(params)


def read_link(ctx: AppContext, params: dict) -> dict | None:
    """Returns what a page address asks for, or None when it asks nothing.

    Returns:
        {"image": the file to put in the editor (an index preview, a kept upload) or None,
         "source": its index id or None, "k", "box", "match": an index id or None,
         "problems": what was left out, in words}.
    """
    if not any(params.get(key) for key in LINK_KEYS):
        return None
    problems, image, source = [], None, None
    if params.get("id"):
        if params["id"] in ctx.index:
            source = params["id"]
            image = ctx.thumbnails.preview(source)
        else:
            problems.append(f"the image {params['id'][:80]!r} is not in this index")
    elif params.get("q"):
        image = ctx.kept.path_of(params["q"]) if ctx.kept is not None else None
        if image is None:
            problems.append("its uploaded query image is no longer kept (an upload is kept a day after its link "
                            "was made)")
    most = max_k(ctx.engine)
    k = min(DEFAULT_K, most)
    if params.get("k") is not None and params["k"] != "":
        text = str(params["k"]).strip()
        if text.isascii() and text.isdigit() and 1 <= int(text) <= most:
            k = int(text)
        else:
            problems.append(f"K {text[:40]!r} is not a whole number from 1 to {most}, so K is {k}")
    box = params.get("box") or ""
    try:
        box = ",".join(str(v) for v in parse_box(box) or ())
    except QueryError:
        problems.append(f"the box {box[:80]!r} is not four whole numbers x0,y0,x1,y1, so it was left out")
        box = ""
    shown = params.get("match") or None
    if shown is not None and shown not in ctx.index:
        problems.append(f"the result to explain, {shown[:80]!r}, is not in this index")
        shown = None
    return {"image": image, "source": source, "k": k, "box": box, "match": shown, "problems": problems}


def run_link(ctx: AppContext, link: dict, root: str = ""):
    """Runs a link's query; returns the editor, K, box and source, then `search`'s (gallery, records, timings, searched).

    A box with no pixel of the image is left out and the image searched whole; whatever was left
    out is said in one warning.
    """
    problems, box = list(link["problems"]), link["box"]
    outputs = (None, None, None, None)
    if link["image"] is not None:
        try:
            try:
                result, searched = run_query(ctx, link["image"], link["k"], box, link["source"])
            except QueryError as e:
                if e.title != "Empty crop":
                    raise
                problems.append(f"the box {e.box_text} holds no pixel of the {e.size[0]} × {e.size[1]} image, "
                                "so it was left out")
                box = ""
                result, searched = run_query(ctx, link["image"], link["k"], box, link["source"])
            outputs = (result_gallery(ctx.thumbnails, result), records_of(result, root),
                       timings_of(result, ctx.engine), searched)
        except QueryError as e:
            problems.append(f"its query cannot be searched ({e})")
    if problems:
        gr.Warning("Not all of this link could be used: " + "; ".join(problems) + ".", title="Link partly used")
    editor = link["image"] if link["image"] is not None else gr.update()
    return (editor, link["k"], box, link["source"], *outputs)


def open_link_match(ctx: AppContext, link: dict | None, records):
    """Opens the match panel on the link's `match` result, once its search has run (see `open_result`)."""
    shown = (link or {}).get("match") if records else None
    return open_result(ctx, shown, records)
