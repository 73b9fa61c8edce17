"""The interface: query, K, box and examples on the left; results and the match view on the right; the named API."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio.components.api_component import Api
from gradio.context import get_blocks_context

from webapp.context import AppContext
from webapp.gate import CONCURRENCY_LIMIT
from webapp.handlers import (check_upload, describe, match_api, pick_example, pick_result, search_again, search_api,
                             search_ui, show_match)
from webapp.links import open_link_match, read_link, run_link, share_link
from webapp.queries import DEFAULT_K, max_k, query_file
from webapp.records import root_url

# 64 queued queries are about 15 s of work on 2 cores (benchmarks/app_latency.py).
QUEUE_MAX_SIZE = 64


RESULTS_SCHEMA = ("[{rank, id, score, similarity, thumbnail, preview}], best first; similarity is the cosine of "
                  "the query and the image, score the ranking score; thumbnail and preview are image URLs")
TIMINGS_SCHEMA = "{embed_ms, search_ms, total_ms, runtime}"
CONFIDENCE_SCHEMA = ("{confident, evidence: {similarity, threshold, rule}}: confident is false when the collection "
                     "holds no confident match, null where no threshold was measured for the index")
# What the in-app API page says of /search, the plain HTTP endpoint included.
SEARCH_DESCRIPTION = ("Finds the k indexed images most similar to `image`, cropped to `box`, as JSON records with "
                      "their images' URLs. The same search over plain HTTP: POST /api/search?k=&box= with the "
                      "multipart field \"image\".")
# Uploaded files and result thumbnails in Gradio's cache: swept hourly, kept one day.
DELETE_CACHE = (3600, 24 * 3600)
INTRO = """# Landmark image search
Upload a photo of a building or monument and find the most similar photos among **{count}
images**. To search for part of the photo, **drag a rectangle on it**, then **Search**. Or start
from one of the example images. Click a result to see it larger and which details matched.
<small>Each image is described by one vector from a convolutional network ({network}, {pooling}
pooling, run by {runtime}); results are ranked by cosine similarity{rerank}. Each result shows its
cosine similarity to the query.</small>"""


RERANK_DIFFUSION = (", then re-ranked by diffusion over the collection's neighbour graph, which favours"
                    " photos of the same place")
SHARE_NOTE = ("<small>Anyone with the link sees the query image. An uploaded image is kept on the server for "
              "{hours} hours after its link is made, then deleted.</small>")


ASSETS = Path(__file__).resolve().parent / "assets"
CSS = (ASSETS / "app.css").read_text()
# The share field gets "?id=.." or "?q=..": the browser knows the address the page is really served
# at; the full link is also copied to the clipboard when the browser allows it.
SHARE_JS = ("(query) => { if (!query) return query; const url = new URL(query, window.location.href).href;"
            " if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {}); return url; }")
# The match panel opens below the results, often below the window: bring it into view once drawn.
SCROLL_JS = ("() => new Promise((done) => requestAnimationFrame(() => {"
             " const panel = document.getElementById('match-panel');"
             " if (panel) panel.scrollIntoView({block: 'start'}); done(); }))")
# Fresh results close the error pop-ups of earlier queries (warnings, such as a link's, stay).
CLOSE_ERRORS_JS = ("() => document.querySelectorAll('.toast-body.error .toast-close')"
                   ".forEach((button) => button.click())")
# Dragging on the query image draws the crop rectangle and writes it, in the image's own pixels, into
# the box field; the rectangle is redrawn from the field, so the two always agree (typing or a link
# sets the field too). A click without a drag clears the box. No pixel of the image is changed.
# The file holds one arrow function and nothing else: Gradio evaluates it as an expression.
DRAG_JS = (ASSETS / "drag.js").read_text()


def build_demo(ctx: AppContext, *, concurrency: int = CONCURRENCY_LIMIT) -> gr.Blocks:
    """Returns the interface: query, K, box and examples on the left, results and match panel on the right."""
    engine, index = ctx.engine, ctx.index
    pipeline = index.meta.get("pipeline", {})
    engine_limit = dict(concurrency_limit=concurrency, concurrency_id="engine")
    private = dict(api_visibility="private")
    with gr.Blocks(title="Landmark image search", delete_cache=DELETE_CACHE) as demo:
        source = gr.State(None)  # the index id of the image last put in the editor by the app
        searched = gr.State(None)  # the query as last searched (run_query's `searched`)
        shown = gr.State(None)  # the index id the match panel shows
        link = gr.State(None)  # what the page's address asks for (webapp.links.read_link)
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
                    [ctx.thumbnails.jpeg(i) for i in ctx.examples],
                    label="Examples from the index",
                    columns=4, height="auto", allow_preview=False, show_label=False,
                    buttons=[], elem_id="examples",
                )
            with gr.Column(scale=3, min_width=360):
                timing = gr.Markdown("", elem_id="timing")
                results = gr.Gallery(label="Most similar images", show_label=False, columns=4, height="auto",
                                     object_fit="cover", format="jpeg", allow_preview=False, buttons=[],
                                     elem_id="results")
                gr.Markdown("<small>Click a result to see it larger and why it matched.</small>",
                            elem_id="match-hint")
                with gr.Column(visible=False, elem_id="match-panel") as panel:
                    match_title = gr.Markdown("", elem_id="match-title")
                    result_image = gr.Image(label="The result", show_label=False, type="filepath",
                                            interactive=False, buttons=["fullscreen"], elem_id="result-image")
                    match_text = gr.Markdown("", elem_id="match-count")
                    match_picture = gr.Image(label="Why it matched", type="pil", format="jpeg", interactive=False,
                                             visible=False, buttons=["fullscreen"], elem_id="match")
                    gr.Markdown("<small>[Back to the results](#results)</small>", elem_id="back-to-results")
                with gr.Row():
                    share_button = gr.Button("Link to this page", visible=False, elem_id="share-button",
                                             size="sm", scale=1)
                    share = gr.Textbox(label="Link to this page (copied)", interactive=False, buttons=["copy"],
                                       visible=False, elem_id="share", scale=4)
                gr.Markdown(SHARE_NOTE.format(hours=ctx.kept.seconds // 3600 if ctx.kept else 24),
                            elem_id="share-note")
                with gr.Row():
                    preview = gr.HTML("", elem_id="searched")
                    with gr.Accordion("Results as JSON", open=False, elem_id="json-accordion"):
                        records = gr.JSON(label="Results", elem_id="records")
                timings = gr.JSON(label="Timings", visible=False, elem_id="timings")

        # Handlers that Gradio calls with a request or the event's data are plain functions here:
        # Gradio finds such parameters by their annotations, which a functools.partial hides.
        def on_search(image, k_value, box_value, source_value, request: gr.Request):
            return search_ui(ctx, image, k_value, box_value, source_value, root_url(request))

        def on_k(image, k_value, box_value, source_value, last, request: gr.Request):
            return search_again(ctx, image, k_value, box_value, source_value, last, root_url(request))

        def on_example(evt: gr.SelectData):
            return pick_example(ctx, evt)

        def on_result(rows, evt: gr.SelectData):
            return pick_result(ctx, rows, evt)

        def on_load(request: gr.Request):
            return read_link(ctx, dict(request.query_params))

        def on_link(asked, request: gr.Request):
            return run_link(ctx, asked, root_url(request))

        # A search's outputs, then what follows every search: the time line, the query as searched,
        # the share button, the match panel closed, old error pop-ups closed.
        found = [results, records, timings, searched]
        after = dict(fn=describe, inputs=[timings, searched],
                     outputs=[timing, preview, share_button, share, panel, shown], queue=False, **private)
        close_errors = dict(fn=None, js=CLOSE_ERRORS_JS, queue=False, **private)
        # preprocess=False: the handlers decode the editor's file themselves (see `decode_query`).
        search_io = dict(inputs=[query, k, box, source], outputs=found, preprocess=False, **private, **engine_limit)
        gr.on([button.click, box.submit], on_search, **search_io, trigger_mode="always_last").success(
            **after).success(**close_errors)
        # A new K searches again (a slider's release, or its number typed in).
        k.release(on_k, inputs=[query, k, box, source, searched], outputs=found, preprocess=False,
                  trigger_mode="always_last", **private, **engine_limit).success(**after).success(**close_errors)
        query.upload(lambda value: check_upload(ctx, value), inputs=query, outputs=[query, box, source],
                     concurrency_limit=None, preprocess=False, **private)
        query.clear(lambda: ("", None), outputs=[box, source], queue=False, **private)
        example_gallery.select(on_example, outputs=[query, box, source], queue=False, **private).success(
            on_search, **search_io).success(**after).success(**close_errors)

        # A result's click opens the panel at once, in view, with the result at its largest stored
        # size; the match view follows when computed.
        opened = [panel, match_title, result_image, match_text, match_picture, share, shown]
        scroll = dict(fn=None, js=SCROLL_JS, queue=False, **private)
        matching = dict(fn=lambda last, image_id, rows: show_match(ctx, last, image_id, rows),
                        inputs=[searched, shown, records], outputs=[match_picture, match_text], **private,
                        **engine_limit)
        results.select(on_result, inputs=records, outputs=opened, queue=False, **private).success(
            **scroll).success(**matching)

        # The share button keeps an uploaded query (webapp.kept) and shows the page's link.
        share_button.click(lambda last, image_id: gr.update(value=share_link(ctx, last, image_id), visible=True),
                           inputs=[searched, shown], outputs=share, **private).success(
            fn=None, js=SHARE_JS, inputs=share, outputs=share, queue=False, **private)

        # A page address with ?id= or ?q= sets `link`, whose change runs its query, then opens the
        # result it names (&match=).
        demo.load(on_load, outputs=link, concurrency_limit=None, **private)
        link.change(on_link, inputs=link, outputs=[query, k, box, source, *found], **private, **engine_limit).success(
            **after).success(
            lambda asked, rows: open_link_match(ctx, asked, rows), inputs=[link, records], outputs=opened,
            queue=False, **private).success(**scroll).success(**matching)

        add_named_api(ctx, engine_limit)
    return demo



def add_named_api(ctx: AppContext, engine_limit: dict) -> None:
    """Adds the public API, /search and /match, to the Blocks being built.

    Each has its own inputs, so that it takes a plain file, has k and box optional, and never
    fetches a URL (see `refuse_urls`); /search's outputs are JSON only, so that a client has nothing
    to download (the records hold the images' URLs). The handlers' parameter names are the API's
    (client.view_api()).
    """

    def api_search(image, k, box, request: gr.Request):
        return search_api(ctx, image, k, box, root_url(request))

    def api_match(image, box, id):  # noqa: A002
        return match_api(ctx, image, box, id)

    most = min(DEFAULT_K, max_k(ctx.engine))
    results = Api(None, {"type": "array", "items": {"type": "object"}, "description": RESULTS_SCHEMA},
                  label="results")
    timings = Api(None, {"type": "object", "description": TIMINGS_SCHEMA}, label="timings")
    confidence = Api(None, {"type": "object", "description": CONFIDENCE_SCHEMA}, label="confidence")
    picture = gr.Image(label="match view", type="pil", format="jpeg", visible=False)
    matches = Api(None, {"type": "object", "description": "{\"id\", \"matches\"}"}, label="matches")
    # What gr.api does, with our own input components: gr.api would build plain ones.
    config = get_blocks_context()
    config.set_event_trigger(
        [], api_search, [query_file(), Api(most, {"type": "integer"}, label="k"), Api("", {"type": "string"}, label="box")],
        [results, timings, confidence], api_name="search", api_description=SEARCH_DESCRIPTION, **engine_limit)
    config.set_event_trigger(
        [], api_match, [query_file(), Api("", {"type": "string"}, label="box"), Api("", {"type": "string"}, label="id")],
        [picture, matches], api_name="match", api_description=match_api.__doc__.split("\n")[0], **engine_limit)
