"""The interface: query, K, box and examples on the left; results and the match view on the right; the named API."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr
from gradio.components.api_component import Api
from gradio.context import get_blocks_context

from retrieval.engine import SearchEngine
from webapp.gate import Gate
from webapp.handlers import (check_upload, describe, example_ids, match_api, pick_example, read_link, run_link,
                             search_api, search_ui, show_match)
from webapp.queries import DEFAULT_K, max_k, query_file
from webapp.thumbnails import Thumbnails

# Measured on 2 CPU cores (benchmarks/app_latency.py): 20 queries at once finish as soon with
# 1 as with 2 or 4 running together, and each waits least with 1; TensorFlow already spreads one
# forward pass over the cores. 64 queued queries are about 15 s of work.
CONCURRENCY_LIMIT = 1
QUEUE_MAX_SIZE = 64


# Uploaded files and result thumbnails in Gradio's cache: swept hourly, kept one day.
DELETE_CACHE = (3600, 24 * 3600)
INTRO = """# Landmark image search
Upload a photo of a building or monument and find the most similar photos among **{count}
images**. To search for part of the photo, **drag a rectangle on it**, then **Search**. Or start
from one of the example images. Click a result to see which details matched.
<small>Each image is described by one vector from a convolutional network ({network}, {pooling}
pooling, run by {runtime}); results are ranked by cosine similarity{rerank}.</small>"""


RERANK_DIFFUSION = (", then re-ranked by diffusion over the collection's neighbour graph, which favours"
                    " photos of the same place; scores are then relative to the best match")


ASSETS = Path(__file__).resolve().parent / "assets"
CSS = (ASSETS / "app.css").read_text()
# The share field gets "?id=..": the browser knows the address the page is really served at.
SHARE_JS = "(query) => query ? new URL(query, window.location.href).href : query"
# Dragging on the query image draws the crop rectangle and writes it, in the image's own pixels, into
# the box field; the rectangle is redrawn from the field, so the two always agree (typing or a link
# sets the field too). A click without a drag clears the box. No pixel of the image is changed.
# The file holds one arrow function and nothing else: Gradio evaluates it as an expression.
DRAG_JS = (ASSETS / "drag.js").read_text()


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
