"""Landmark image search: a Gradio app over a prebuilt index.

Reads its settings, loads one index and the network recorded in it, builds the interface and
launches. Features and search live in `retrieval/`; nothing here computes either.

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
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

import gradio as gr
import numpy as np
from PIL import Image

from retrieval.build import BuildError
from retrieval.engine import SearchEngine
from retrieval.features import ImageError, crop_box, load_image
from retrieval.hub import HubError, pull_index
from retrieval.index import Index, IndexFormatError, load_index
from retrieval.networks import NetworkError, build_network

DEFAULT_INDEX = Path(__file__).resolve().parent / "index"
DEFAULT_K = 20
MAX_K = 100
# Queries larger than this are downscaled before embedding: the network sees a few hundred
# pixels anyway, and a 48-megapixel phone photo would only cost time and memory.
QUERY_MAX_SIDE = 2048
N_EXAMPLES = 8
PREVIEW_SIDE = 320
# Measured on 2 CPU cores (tests/appserver/latency.py): 20 queries at once finish as soon with
# 1 as with 2 or 4 running together, and each waits least with 1; TensorFlow already spreads one
# forward pass over the cores. 64 queued queries are about 15 s of work.
CONCURRENCY_LIMIT = 1
QUEUE_MAX_SIZE = 64
MAX_FILE_SIZE = "20mb"
# Uploaded files and result thumbnails in Gradio's cache: swept hourly, kept one day.
DELETE_CACHE = (3600, 24 * 3600)

NO_INDEX_MESSAGE = """No index to serve. Give one of:
  --index DIR        a folder made by `python -m precompute.build_index --images ... --out DIR`
  INDEX_REPO=owner/name [INDEX_REVISION=tag-or-commit]   an index on the Hugging Face Hub
  --images DIR       a folder of images: the app indexes it (incrementally) and serves it
or put an index folder at {default}."""

INTRO = """# Landmark image search
Upload a photo of a building or monument and find the most similar photos among **{count}
images**. To search for part of the photo, open the **Image** tool at the editor's left, choose
**Crop**, drag the corners and **Confirm crop**. Or start from one of the example images.
<small>Each image is described by one vector from a convolutional network ({network}, {pooling}
pooling); results are ranked by cosine similarity{rerank}.</small>"""
RERANK_DIFFUSION = (", then re-ranked by diffusion over the collection's neighbour graph, which favours"
                    " photos of the same place; scores are then relative to the best match")

CSS = """
#intro { max-width: 64rem; }
#timing { min-height: 1.6em; }
#results .grid-wrap { max-height: none; }
#examples .grid-wrap { min-height: 0; max-height: none; }
#searched img { max-height: 180px; width: auto; }
#searched figcaption { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
#results .caption-label {
  left: var(--block-label-margin); max-width: none; white-space: pre-line; overflow-wrap: anywhere;
  font-size: var(--text-xs); line-height: 1.25; opacity: 0.9;
}
"""
# The share field gets "?id=..": the browser knows the address the page is really served at.
SHARE_JS = "(query) => query ? new URL(query, window.location.href).href : query"


def parse_box(text: str | None) -> tuple[int, int, int, int] | None:
    """Returns the (x0, y0, x1, y1) box written as "x0,y0,x1,y1", or None for an empty field.

    Raises:
        gr.Error: for anything but four integers.
    """
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        box = tuple(int(float(p)) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise gr.Error(f"A box is four whole numbers x0,y0,x1,y1 in pixels; got {text!r}.", title="Bad box")
    return box


def editor_image(value: dict | None) -> Image.Image | None:
    """Returns the image the user sees in the editor (its composite, else its background), or None.

    Search events take the editor's value unprocessed, as FileData dicts of files Gradio accepted
    into its cache, so that each file is decoded here by `retrieval.features.load_image`: an
    undecodable file or a decompression bomb then gets a message that says so, where Gradio's
    own decoding would only report a processing error. Links pass PIL images.

    Raises:
        gr.Error: the file is not an image we can decode safely.
    """
    if not value:
        return None
    item = value.get("composite") or value.get("background")
    if item is None or isinstance(item, Image.Image):
        return item
    path = item.get("path") if isinstance(item, dict) else None
    if not path:
        return None
    try:
        return load_image(path)
    except ImageError as e:
        raise gr.Error(f"This file cannot be used as a query: {e}.", title="Not a usable image") from None


def check_k(engine: SearchEngine, k) -> int:
    """Returns k as an int when it is a whole number from 1 to `max_k`; raises gr.Error otherwise."""
    try:
        whole = int(k)
    except (TypeError, ValueError):
        whole = None
    if whole is None or whole != k or not 1 <= whole <= max_k(engine):
        raise gr.Error(f"K must be a whole number from 1 to {max_k(engine)}; got {k!r}.", title="Bad K")
    return whole


class Thumbnails:
    """The index's thumbnails as PIL images and as files for Gradio to serve.

    Components get file paths, not PIL images: Gradio saves a PIL image to its cache by
    rewriting a file named after its content, which a concurrent request for the same thumbnail
    may be downloading at that moment (measured: truncated downloads with 20 clients). Files here
    are written once, atomically, and Gradio copies them into its cache atomically. Only files
    the app returns are served; this folder itself is not.
    """

    def __init__(self, index: Index, folder: Path):
        self.index = index
        self.folder = Path(folder)

    def image(self, image_id: str) -> Image.Image:
        """Returns the thumbnail of an index image, decoded."""
        return Image.open(io.BytesIO(self.index.thumbnail(image_id))).convert("RGB")

    def jpeg(self, image_id: str) -> str:
        """Returns the path of the stored JPEG thumbnail, for galleries."""
        return self._file(image_id, ".jpg", lambda: self.index.thumbnail(image_id))

    def png(self, image_id: str) -> str:
        """Returns the path of a lossless PNG of the decoded thumbnail, for the editor (see `is_unedited`)."""

        def encode() -> bytes:
            buffer = io.BytesIO()
            self.image(image_id).save(buffer, format="PNG")
            return buffer.getvalue()

        return self._file(image_id, ".png", encode)

    def is_unedited(self, image_id: str, image: Image.Image) -> bool:
        """Tells whether `image` is, pixel for pixel, the thumbnail of `image_id`.

        The editor hands back the PNG it was given unchanged until the user crops, draws or
        uploads, so this is how a search knows its query is still that index image. The editor's
        upload event cannot tell: it also fires when the app sets the editor's value.
        """
        thumb = self.image(image_id)
        return thumb.size == image.size and np.array_equal(np.asarray(thumb), np.asarray(image.convert("RGB")))

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


def preview_html(image: Image.Image | None) -> str:
    """Returns a small inline picture of the query as searched, with its size in pixels.

    Inline, so that it involves no file: identical queries from many users at once would
    otherwise race on one cache file (see `Thumbnails`).
    """
    if image is None:
        return ""
    small = image.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure class="searched"><img src="data:image/jpeg;base64,{data}" alt="the query as searched">'
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


def search(engine: SearchEngine, thumbnails: Thumbnails, image: dict | None, k: float = DEFAULT_K,
           box: str | None = "", source: str | None = None):
    """Runs one query; the named API endpoint /search.

    Args:
        engine: the loaded search engine.
        thumbnails: its index's thumbnails.
        image: the editor's unprocessed value {"background", "layers", "composite"} (see
            `editor_image`); API callers may send only "background".
        k: how many results.
        box: optional "x0,y0,x1,y1" crop in pixels of the image.
        source: the index id the editor's image came from, when it did (UI state).

    Returns:
        (gallery, [{rank, id, score}], {"embed_ms", "search_ms", "total_ms"}, searched) where
        `searched` is UI state: the query image as searched and the index id it is, if any.

    Raises:
        gr.Error: no image, an unusable image, a bad box or an empty crop.
    """
    k = check_k(engine, k)
    parsed_box = parse_box(box)
    picture = editor_image(image)
    if picture is None:
        raise gr.Error("Upload an image first (or pick one of the examples).", title="No image")
    unedited = source is not None and source in engine.index and thumbnails.is_unedited(source, picture)
    searched = {"id": source if unedited else None, "image": picture}
    if unedited and parsed_box is None:
        # A whole index image: its stored descriptor is the exact one, made from the full-size photo.
        result = engine.search_id(source, k)
    else:
        try:
            if parsed_box is not None:
                picture = crop_box(picture, parsed_box)
        except ImageError as e:
            raise gr.Error(f"The crop is empty: {e}.", title="Empty crop") from None
        if max(picture.size) > QUERY_MAX_SIDE:
            picture = picture.copy()
            picture.thumbnail((QUERY_MAX_SIDE, QUERY_MAX_SIDE), Image.BILINEAR)
        searched["image"] = picture
        try:
            result = engine.search(picture, k)
        except ImageError as e:
            raise gr.Error(f"This image cannot be searched: {e}.", title="Not a usable image") from None
    timings = {
        "embed_ms": round(result.embed_ms, 2),
        "search_ms": round(result.search_ms, 2),
        "total_ms": round(result.embed_ms + result.search_ms, 2),
    }
    return result_gallery(thumbnails, result), result.to_records(), timings, searched


def describe(timings: dict | None, searched: dict | None, source: str | None, box: str | None, k: float):
    """Returns the query-time line, the query as searched and the share query for the UI."""
    if not timings:
        return "", "", ""
    if searched and searched.get("id") and not (box or "").strip():
        line = (f"**Query time {timings['total_ms']:.1f} ms**: search {timings['search_ms']:.1f} ms"
                " (an index image: its stored descriptor needs no embedding)")
    else:
        line = (f"**Query time {timings['total_ms']:.1f} ms**: embedding {timings['embed_ms']:.1f} ms"
                f" + search {timings['search_ms']:.1f} ms")
    return line, preview_html(searched.get("image") if searched else None), share_query(source, box, k, searched)


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
    except gr.Error:
        gr.Warning(f"Ignoring the box {box[:80]!r}: it must be four whole numbers x0,y0,x1,y1.", title="Bad box")
        box = ""
    return {"id": image_id, "k": k, "box": box}


def run_link(engine: SearchEngine, thumbnails: Thumbnails, link: dict):
    """Returns new values for the editor, k, box and source, then the outputs of `search` and `describe`."""
    image_id, k, box = link["id"], link["k"], link["box"]
    outputs = search(engine, thumbnails, {"background": thumbnails.image(image_id)}, k, box, image_id)
    return (thumbnails.png(image_id), k, box, image_id, *outputs, *describe(outputs[2], outputs[3], image_id, box, k))


def pick_example(thumbnails: Thumbnails, examples: list[str], evt: gr.SelectData):
    """Loads the selected example (an index image) into the editor."""
    image_id = examples[evt.index]
    return thumbnails.png(image_id), "", image_id


def max_k(engine: SearchEngine) -> int:
    """Returns the largest K offered: 100, or the index size when smaller."""
    return max(1, min(MAX_K, len(engine)))


def example_ids(index: Index, n: int = N_EXAMPLES) -> list[str]:
    """Returns n index ids spread evenly over the index."""
    count = len(index)
    return [str(index.ids[i * count // n]) for i in range(min(n, count))]


def build_demo(engine: SearchEngine, thumbnails: Thumbnails, *,
               concurrency: int = CONCURRENCY_LIMIT) -> gr.Blocks:
    """Returns the interface: query editor, K, box and examples on the left, results on the right."""
    index = engine.index
    examples = example_ids(index)
    pipeline = index.meta.get("pipeline", {})
    with gr.Blocks(title="Landmark image search", delete_cache=DELETE_CACHE) as demo:
        source = gr.State(None)  # the index id of the image last put in the editor by the app
        searched = gr.State(None)
        link = gr.State(None)  # the query a shared link asks for
        gr.Markdown(
            INTRO.format(network=index.meta["network"], pooling=pipeline.get("pooling", "?"), count=len(index),
                         rerank=RERANK_DIFFUSION if index.meta.get("diffusion") else ""),
            elem_id="intro",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                query = gr.ImageEditor(
                    label="Query image",
                    type="pil",
                    image_mode="RGB",
                    sources=("upload", "clipboard"),
                    transforms=("crop",),
                    layers=False,
                    format="png",
                    height=380,
                    elem_id="query",
                )
                with gr.Row():
                    k = gr.Slider(1, max_k(engine), value=min(DEFAULT_K, max_k(engine)), step=1,
                                  label="Results (K)", elem_id="k", scale=3)
                    box = gr.Textbox(label="Box (optional)", placeholder="x0,y0,x1,y1", max_lines=1,
                                     elem_id="box", scale=2)
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
                                     object_fit="cover", format="jpeg", buttons=["fullscreen"],
                                     elem_id="results")
                with gr.Row():
                    share = gr.Textbox(label="Link to this query", interactive=False, buttons=["copy"],
                                       placeholder="Shown when the query is an index image", elem_id="share",
                                       scale=4)
                    gr.DeepLinkButton("Link to this page", copied_value="Link copied", scale=1)
                with gr.Row():
                    preview = gr.HTML("", elem_id="searched")
                    with gr.Accordion("Results as JSON", open=False, elem_id="json-accordion"):
                        records = gr.JSON(label="Results", elem_id="records")
                timings = gr.JSON(label="Timings", visible=False, elem_id="timings")

        run = partial(search, engine, thumbnails)
        show = dict(fn=describe, inputs=[timings, searched, source, box, k],
                    outputs=[timing, preview, share], api_visibility="private", queue=False)
        full_link = dict(fn=None, js=SHARE_JS, inputs=share, outputs=share, api_visibility="private", queue=False)
        # preprocess=False: `editor_image` decodes the editor's files itself, and `check_k` checks K.
        search_io = dict(inputs=[query, k, box, source], outputs=[results, records, timings, searched],
                         preprocess=False)
        gr.on([button.click, box.submit], run, **search_io, api_name="search",
              concurrency_limit=concurrency, trigger_mode="always_last").success(**show).success(**full_link)
        def on_example(evt: gr.SelectData):
            return pick_example(thumbnails, examples, evt)

        def on_load(request: gr.Request):
            return read_link(engine, dict(request.query_params))

        example_gallery.select(on_example, outputs=[query, box, source],
                               api_visibility="private", queue=False).success(
            run, **search_io, api_visibility="private", concurrency_limit=concurrency,
        ).success(**show).success(**full_link)
        # A page address with ?id= sets `link`, whose change runs the query. Without one nothing
        # runs, so a Gradio deep link (?deep_link=) keeps the values it restored.
        demo.load(on_load, outputs=link, api_visibility="private", concurrency_limit=None)
        link.change(partial(run_link, engine, thumbnails), inputs=link,
                    outputs=[query, k, box, source, results, records, timings, searched, timing, preview, share],
                    api_visibility="private", concurrency_limit=concurrency).success(**full_link)
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
        return load_index(build_from_images(args.images, out, args.network, args.weights))
    if environ.get("INDEX_REPO"):
        return pull_index(environ["INDEX_REPO"], revision=environ.get("INDEX_REVISION") or None)
    if DEFAULT_INDEX.is_dir():
        return load_index(DEFAULT_INDEX)
    raise SystemExit(NO_INDEX_MESSAGE.format(default=DEFAULT_INDEX))


def build_from_images(images: Path, out: Path, network_name: str, weights: str) -> Path:
    """Indexes `images` into `out`, reusing what an earlier run there already did; returns `out`."""
    from tqdm import tqdm

    from retrieval.build import build_index
    from retrieval.defaults import DEFAULT

    print(f"Indexing {images} into {out} with {network_name}", file=sys.stderr, flush=True)
    with tqdm(total=0, unit="img", desc="embedding", dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = build_index(images, out, build_network(network_name, weights=weights), DEFAULT.descriptor,
                             dba=DEFAULT.dba, qe=DEFAULT.qe, alpha=DEFAULT.alpha, diffusion=DEFAULT.diffusion,
                             progress=progress, log=tqdm.write)
    print(f"{report.count} images ({report.embedded} embedded, {report.reused} reused, "
          f"{len(report.skipped)} skipped)", file=sys.stderr, flush=True)
    return out


def load_engine(index: Index) -> SearchEngine:
    """Returns a warmed-up engine over `index`, with the network recorded in it."""
    network = build_network(index.meta["network"], weights=index.meta["weights"])
    engine = SearchEngine(index, network)
    engine.warm_up()
    return engine


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        engine = load_engine(open_index(args, os.environ))
    except (IndexFormatError, FileNotFoundError, NetworkError, BuildError, HubError) as e:
        raise SystemExit(f"Cannot serve this index: {e}") from None
    print(f"Loaded {len(engine)} images in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    folder = Path(tempfile.mkdtemp(prefix="landmark-thumbnails-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    demo = build_demo(engine, Thumbnails(engine.index, folder), concurrency=args.concurrency)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=args.concurrency)
    demo.launch(
        server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_SIZE, allowed_paths=[],
        ssr_mode=False, footer_links=["api", "gradio"], css=CSS, theme=gr.themes.Soft(),
    )


if __name__ == "__main__":
    main()
