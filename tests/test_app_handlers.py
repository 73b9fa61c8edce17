"""The app's handlers and its start-up in this process, over a tiny index: what each query path shows the user.

The live app (tests/test_app.py, tests/test_browser.py) checks the same paths end to end over
real photos; these run in a second and are the tests meant for app.py in mutation runs.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
import webapp.context
import webapp.gate
import webapp.guard
import webapp.handlers
import webapp.links
import webapp.messages
import webapp.queries
import webapp.thumbnails
from retrieval.build import build_index
from retrieval.engine import SearchEngine
from retrieval.features import Pipeline, embed_image
from retrieval.index import load_index

PIPE = Pipeline(max_side=64)
N = 12


@pytest.fixture(autouse=True)
def uploads_under_pytest_temp(tmp_path_factory, monkeypatch):
    """Gradio's upload folder is pytest's temporary folder here: the files these tests make count as uploads.

    The handlers open only files under GRADIO_TEMP_DIR (webapp.guard.checked_upload); tests/test_abuse.py
    checks that anything else is refused.
    """
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """(engine, thumbnails, photos folder) over 12 random photos, thumbnails as the app serves them."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / f"p{i:02d}.png")
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(root, out, tiny, PIPE, dtype="float32", qe=2)
    engine = SearchEngine(load_index(out), tiny, backend="exact")
    return engine, webapp.thumbnails.Thumbnails(engine.index, tmp_path_factory.mktemp("thumbs")), root


def context(served, gate: webapp.gate.Gate | None = None, kept=None) -> webapp.context.AppContext:
    """The handlers' one shared object over the tiny index: its engine and thumbnails, a gate, kept uploads."""
    engine, thumbs, _ = served
    return webapp.context.AppContext(engine, thumbs, gate or webapp.gate.Gate(1, 4), kept)


def editor(path) -> str:
    """The query as the new app hands it to `search`: the path of the file (the editor dict is gone)."""
    return str(path)


def shown(thumbs, image_id):
    """The picture the app puts in the query image for an index id: its preview file, decoded."""
    return Image.open(thumbs.preview(image_id)).convert("RGB")


def describe(timings, searched):
    """webapp.handlers.describe's (time line, preview of the query as searched)."""
    return webapp.handlers.describe(timings, searched)[:2]


def test_an_unedited_example_is_searched_by_its_stored_descriptor(served):
    engine, thumbs, _ = served
    gallery, records, timings, searched = webapp.handlers.search(context(served), editor(thumbs.preview("p03")), 5, "",
                                                                 "p03")
    stored = engine.search_id("p03", 5)
    assert [r["id"] for r in records] == stored.ids
    assert ids_scores(records) == stored.to_records()
    assert timings["embed_ms"] == 0.0 and timings["total_ms"] == timings["search_ms"]
    assert (searched["id"], searched["box"], searched["k"]) == ("p03", "", 5)
    assert [caption for _, caption in gallery] == [f"#{r['rank']} · {r['similarity']:.3f}\n{r['id']}" for r in records]
    assert [Path(f).read_bytes() for f, _ in gallery] == [engine.index.thumbnail(i) for i in stored.ids]
    line, preview = describe(timings, searched)
    assert "its stored descriptor needs no embedding" in line and "embedding 0.0 ms" not in line
    assert "Query as searched: 80 × 60 px" in preview


def test_a_crop_or_upload_after_an_example_is_searched_as_the_new_image(served, tmp_path):
    engine, thumbs, root = served
    # The editor still says the query came from p03, but it now holds a crop of it, or another photo.
    crop = shown(thumbs, "p03").crop((0, 0, 40, 30))
    crop.save(tmp_path / "crop.png")
    for picture, path in ((crop, tmp_path / "crop.png"), (Image.open(root / "p07.png"), root / "p07.png")):
        _, records, timings, searched = webapp.handlers.search(context(served), editor(path), 4, "", "p03")
        embedded = engine.search(picture, 4)
        assert ids_scores(records) == embedded.to_records()
        assert ids_scores(records) != engine.search_id("p03", 4).to_records()
        assert timings["embed_ms"] > 0 and searched["id"] is None and searched["file"] == str(path)
        line, _ = describe(timings, searched)
        assert "embedding" in line and "stored descriptor" not in line
    # One changed pixel is an edit too.
    edited = shown(thumbs, "p03")
    edited.putpixel((0, 0), tuple(255 - v for v in edited.getpixel((0, 0))))
    edited.save(tmp_path / "edited.png")
    assert webapp.handlers.search(context(served), editor(tmp_path / "edited.png"), 4, "", "p03")[3]["id"] is None
    assert not thumbs.is_unedited("p03", thumbs.preview("p04"))
    shown(thumbs, "p03").resize((40, 30)).save(tmp_path / "small.png")
    assert not thumbs.is_unedited("p03", str(tmp_path / "small.png"))


def test_big_queries_are_downscaled_to_2048_pixels(served, tmp_path):
    engine, thumbs, root = served
    big = Image.open(root / "p02.png").resize((3000, 2250), Image.NEAREST)
    big.save(tmp_path / "big.png")
    _, records, _, searched = webapp.handlers.search(context(served), editor(tmp_path / "big.png"), 3)
    assert searched["image"].size == (2048, 1536)
    # The search itself decodes the whole file as the build does (an indexed photo then matches itself).
    assert ids_scores(records) == engine.search(str(tmp_path / "big.png"), 3).to_records()
    for size, searched_size in (((2048, 1536), (2048, 1536)), ((1537, 2049), (1536, 2048))):
        Image.open(root / "p02.png").resize(size, Image.NEAREST).save(tmp_path / "edge.png")
        assert webapp.handlers.search(context(served), editor(tmp_path / "edge.png"), 3)[3]["image"].size == searched_size


@pytest.mark.parametrize("k", [2.5, 0, 13, "3", None, True])
def test_bad_k_is_refused_with_its_range(served, k):
    _, thumbs, _ = served
    with pytest.raises(gr.Error, match=r"K must be a whole number from 1 to 12; got"):
        webapp.handlers.search(context(served), editor(thumbs.preview("p01")), k)


def test_whole_float_k_and_the_largest_k_are_accepted(served):
    engine, thumbs, _ = served
    assert webapp.queries.check_k(engine, 4.0) == 4 and type(webapp.queries.check_k(engine, 4.0)) is int
    assert webapp.queries.check_k(engine, 12) == 12 and webapp.queries.check_k(engine, 1) == 1
    assert webapp.queries.max_k(engine) == 12


def test_bad_queries_are_refused_with_their_message(served, tmp_path):
    _, thumbs, _ = served
    ctx = context(served)
    with pytest.raises(gr.Error, match="No image to search: upload or paste a photo"):
        webapp.handlers.search(ctx, None, 3)
    with pytest.raises(gr.Error, match="No image to search: upload or paste a photo"):
        webapp.handlers.search_ui(ctx, None, 3, "", None)  # the UI's empty query image
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(gr.Error, match="This file cannot be used as a query: not a readable image"):
        webapp.handlers.search(ctx, editor(tmp_path / "notes.png"), 3)
    with pytest.raises(gr.Error, match="The box 10,10,10,20 holds no pixel of this 80 × 60 image"):
        webapp.handlers.search(ctx, editor(thumbs.preview("p01")), 3, "10,10,10,20")
    with pytest.raises(gr.Error, match="four whole numbers"):
        webapp.handlers.search(ctx, editor(thumbs.preview("p01")), 3, "1,2,3")


def test_parse_box():
    assert webapp.queries.parse_box(None) is None and webapp.queries.parse_box("  ") is None
    assert webapp.queries.parse_box("1,2,3,4") == (1, 2, 3, 4)
    assert webapp.queries.parse_box(" 1 2  3.7 4 ") == (1, 2, 3, 4)
    for bad in ("1,2,3", "1,2,3,4,5", "a,b,c,d"):
        with pytest.raises(webapp.queries.QueryError, match=f"four whole numbers x0,y0,x1,y1 in pixels; got '{bad}'"):
            webapp.queries.parse_box(bad)


def test_the_editor_value_shown_is_the_one_searched(tmp_path):
    # The UI hands the file unprocessed and uploaded_path picks composite over background.
    def fd(name):
        (tmp_path / name).write_bytes(b"")  # an upload, under Gradio's upload folder (see uploads_under_pytest_temp)
        return {"path": str(tmp_path / name), "meta": {"_type": "gradio.FileData"}}
    assert webapp.queries.uploaded_path({"background": fd("bg.png"), "composite": fd("c.png")}) == str(tmp_path / "c.png")
    assert webapp.queries.uploaded_path({"background": fd("bg.png"), "layers": []}) == str(tmp_path / "bg.png")
    assert webapp.queries.uploaded_path(fd("bg.png")) == str(tmp_path / "bg.png")
    assert webapp.queries.uploaded_path(None) is None and webapp.queries.uploaded_path({"background": None}) is None
    with pytest.raises(webapp.queries.QueryError, match="must be a file uploaded with this request"):
        webapp.queries.uploaded_path({"background": "not a dict"})


def test_examples_are_spread_over_the_index_and_picking_one_loads_it(served):
    engine, thumbs, _ = served
    assert webapp.context.example_ids(engine.index) == ["p00", "p01", "p03", "p04", "p06", "p07", "p09", "p10"]
    assert webapp.context.example_ids(engine.index, n=3) == ["p00", "p04", "p08"]
    assert webapp.context.example_ids(engine.index, n=20) == [f"p{i:02d}" for i in range(N)]
    assert context(served).examples == webapp.context.example_ids(engine.index)

    class Selected:
        index = 2

    ctx = webapp.context.AppContext(engine, thumbs, webapp.gate.Gate(1, 1), examples=["p00", "p05", "p09"])
    png, box, source = webapp.handlers.pick_example(ctx, Selected())
    assert (box, source) == ("", "p09")
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), np.asarray(shown(thumbs, "p09")))


def test_thumbnail_files_are_written_once_and_named_by_row(served):
    engine, thumbs, _ = served
    path = thumbs.jpeg("p02")
    assert Path(path).name == f"{engine.index.row_of('p02')}.jpg"
    assert Path(path).read_bytes() == engine.index.thumbnail("p02")
    Path(path).write_bytes(b"kept")  # an existing file is served as it is, never rewritten
    assert Path(thumbs.jpeg("p02")).read_bytes() == b"kept"
    png = thumbs.preview("p02")  # the editor's file is now the stored JPEG preview, not a PNG
    assert Path(png).name == f"{engine.index.row_of('p02')}.preview.jpg" and Image.open(png).format == "JPEG"
    assert thumbs.is_unedited("p02", png)


def test_the_preview_is_an_inline_jpeg_of_at_most_320_pixels():
    html = webapp.thumbnails.preview_html(Image.new("RGB", (1000, 500)))
    assert "Query as searched: 1000 × 500 px" in html
    import base64
    import re

    data = base64.b64decode(re.search(r"base64,([^\"]+)\"", html).group(1))
    assert Image.open(io.BytesIO(data)).size == (320, 160)
    assert webapp.thumbnails.preview_html(None) == ""


class Args:
    def __init__(self, **kw):
        self.index, self.images, self.out, self.network, self.weights = None, None, None, "efficientnet-lite0", "none"
        self.runtime, self.precision, self.runtime_cache = "keras", "float32", Path("cache")
        self.__dict__.update(kw)


def test_start_up_takes_index_repo_at_its_revision(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("retrieval.hub.pull_index", lambda repo, revision=None: calls.append((repo, revision)) or "pulled")
    monkeypatch.setattr(app, "DEFAULT_INDEX", tmp_path / "absent")
    assert app.open_index(Args(), {"INDEX_REPO": "me/idx", "INDEX_REVISION": "v2"}) == "pulled"
    assert app.open_index(Args(), {"INDEX_REPO": "me/idx", "INDEX_REVISION": ""}) == "pulled"
    assert app.open_index(Args(), {"INDEX_REPO": "me/idx"}) == "pulled"
    assert calls == [("me/idx", "v2"), ("me/idx", None), ("me/idx", None)]
    with pytest.raises(SystemExit, match="No index to serve"):
        app.open_index(Args(), {"INDEX_REPO": ""})


def test_index_on_the_command_line_comes_before_index_repo(monkeypatch, served, tmp_path):
    engine, _, _ = served
    monkeypatch.setattr("retrieval.hub.pull_index", lambda *a, **k: pytest.fail("INDEX_REPO was used"))
    index = app.open_index(Args(index=engine.index.path), {"INDEX_REPO": "me/idx"})
    assert index.path == engine.index.path and len(index) == N
    monkeypatch.setattr(app, "DEFAULT_INDEX", engine.index.path)
    assert len(app.open_index(Args(), {})) == N
    built = []
    monkeypatch.setattr(app, "build_from_images", lambda *a: built.append(a) or engine.index.path)
    assert len(app.open_index(Args(images=tmp_path / "photos"), {"INDEX_REPO": "me/idx"})) == N
    assert built == [(tmp_path / "photos", Path("indexes") / "photos-efficientnet-lite0", "efficientnet-lite0", "none",
                     {"runtime": "keras", "precision": "float32", "cache_dir": Path("cache")})]
    app.open_index(Args(images=tmp_path / "photos", out=tmp_path / "o"), {})
    assert built[-1][1] == tmp_path / "o"


def test_command_line_options(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.concurrency, args.network) == ("127.0.0.1", 7860, 1, "efficientnet-b7")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    args = app.parse_args(["--index", "x", "--concurrency", "2"])
    assert (args.host, args.port, args.concurrency, args.index) == ("0.0.0.0", 7999, 2, Path("x"))
    with pytest.raises(SystemExit):
        app.parse_args(["--index", "x", "--images", "y"])


def test_the_stored_descriptor_is_the_one_embedded_from_the_full_photo(served):
    engine, _, root = served
    np.testing.assert_allclose(engine.index.features[engine.index.row_of("p08")],
                               embed_image(engine.network, root / "p08.png", PIPE), atol=1e-5)


def refusal(fn, *args) -> tuple[str, str]:
    """Returns the (title, message) of the gr.Error that fn(*args) raises: what the user's toast shows."""
    with pytest.raises((gr.Error, webapp.queries.QueryError)) as caught:
        fn(*args)
    return caught.value.title, getattr(caught.value, "message", str(caught.value))


def test_every_refusal_has_its_title_and_message(served, tmp_path, monkeypatch):
    engine, thumbs, _ = served
    ctx = context(served)
    assert refusal(webapp.queries.check_k, engine, 0) == ("Bad K", "K must be a whole number from 1 to 12; got '0'.")
    assert refusal(webapp.queries.parse_box, "1,2") == ("Bad box", "A box is four whole numbers x0,y0,x1,y1 in pixels; got '1,2'.")
    (tmp_path / "notes.png").write_text("not a picture")
    title, message = refusal(webapp.queries.decode_query, str(tmp_path / "notes.png"))
    assert title == "Not a usable image" and message.startswith("This file cannot be used as a query: not a readable")
    assert refusal(webapp.handlers.search, ctx, None, 3) == ("No image", webapp.messages.NO_IMAGE)
    assert refusal(webapp.handlers.search, ctx, editor(thumbs.preview("p01")), 3, "10,10,10,20") == (
        "Empty crop", "The box 10,10,10,20 holds no pixel of this 80 × 60 image: drag a box on the image, or clear "
                      "the box.")
    assert refusal(webapp.handlers.search, ctx, editor(thumbs.preview("p01")), 3, "500,500,600,600")[1].startswith(
        "The box 500,500,600,600 holds no pixel of this 80 × 60 image")
    from retrieval.features import ImageError

    def unusable(*args, **kwargs):
        raise ImageError("too strange")

    monkeypatch.setattr(engine, "search", unusable)
    assert refusal(webapp.handlers.search, ctx, Image.new("RGB", (40, 40)), 3) == (
        "Not a usable image", "This image cannot be searched: too strange.")


def test_timings_are_rounded_to_hundredths_of_a_millisecond(served, monkeypatch):
    from retrieval.engine import SearchResult

    engine, thumbs, _ = served
    from retrieval.confidence import judge

    monkeypatch.setattr(engine, "search", lambda image, k: SearchResult(["p00"], [0.5], [0.4], 12.3456, 0.6789,
                                                                        judge(0.4, 0.68)))
    _, records, timings, searched = webapp.handlers.search(context(served), Image.new("RGB", (40, 40)), 1)
    assert timings == {"embed_ms": 12.35, "search_ms": 0.68, "total_ms": 13.02, "runtime": "keras"}
    assert records == [{"rank": 1, "id": "p00", "score": 0.5, "similarity": 0.4,
                        "thumbnail": "/api/image?id=p00&size=thumbnail", "preview": "/api/image?id=p00&size=preview"}]
    # No confident match: the line above the results says so first, and the results stay.
    assert searched["confidence"] == {"confident": False, "evidence": {
        "similarity": 0.4, "threshold": 0.68, "rule": "best similarity >= threshold"}}
    line = webapp.handlers.describe(timings, searched)[0]
    assert line.startswith(f"**{webapp.messages.NO_CONFIDENT_MATCH}**\n\n**Query time 13.0 ms**")
    monkeypatch.setattr(engine, "search", lambda image, k: SearchResult(["p00"], [0.5], [0.7], 1.0, 1.0,
                                                                        judge(0.7, 0.68)))
    _, _, timings, searched = webapp.handlers.search(context(served), Image.new("RGB", (40, 40)), 1)
    assert webapp.handlers.describe(timings, searched)[0].startswith("**Query time")


def test_describe_without_a_searched_state():
    line, preview = describe({"total_ms": 3.0, "embed_ms": 2.0, "search_ms": 1.0}, None)
    assert line == "**Query time 3.0 ms**: embedding 2.0 ms (keras) + search 1.0 ms" and preview == ""
    line, _ = describe({"total_ms": 1.25, "embed_ms": 0.0, "search_ms": 1.25}, {"id": "p01", "box": ""})
    assert line == "**Query time 1.2 ms**: search 1.2 ms (an index image: its stored descriptor needs no embedding)"


def test_max_k_is_100_or_the_index_size():
    class Sized:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    assert [webapp.queries.max_k(Sized(n)) for n in (0, 1, 7, 100, 5000)] == [1, 1, 7, 100, 100]


def test_no_index_at_all_says_where_one_can_come_from(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "DEFAULT_INDEX", tmp_path / "absent")
    with pytest.raises(SystemExit) as stop:
        app.open_index(Args(), {})
    assert str(stop.value) == app.NO_INDEX_MESSAGE.format(default=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(stop.value)


def test_help_lists_every_option(capsys, monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert " ".join(app.__doc__.split()[:12]) in text  # the module docstring, as written
    assert ".venv/bin/python app.py --index DIR # a folder made by" in text
    for option, help_text in [
        ("--index INDEX", "an index folder (default: the embedded one, ./index)"),
        ("--images IMAGES", "a folder of images to index, then serve"),
        ("--out OUT", "with --images: where the index goes (default: indexes/<folder>-<network>)"),
        ("--network NETWORK", "with --images: efficientnet-b7 or efficientnet-lite0 (works offline)"),
        ("--weights WEIGHTS", "with --images: imagenet or a weights file"),
        ("--concurrency CONCURRENCY", "searches run at once (default 1, measured best on 2 cores)"),
    ]:
        assert f"{option} {help_text}" in text, option
    args = app.parse_args(["--images", "photos", "--out", "o", "--port", "8000"])
    assert (args.images, args.out, args.port, args.weights, args.index) == (Path("photos"), Path("o"), 8000, "imagenet", None)
    assert app.parse_args(["--index", "i"]).index == Path("i")


def test_the_preview_is_the_query_as_a_bilinear_jpeg_at_quality_85():
    import base64
    import re

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (500, 700, 3), dtype=np.uint8))
    small = image.copy()
    small.thumbnail((320, 320), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    html = webapp.thumbnails.preview_html(image)
    assert base64.b64decode(re.search(r"base64,([^\"]+)\"", html).group(1)) == buffer.getvalue()


def file_data(path) -> dict:
    """A file as Gradio hands it to a handler run with preprocess=False: a FileData dict it checked."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def test_help_shows_the_runtime_options_and_the_examples_as_written(capsys, monkeypatch):
    monkeypatch.setattr(app, "RUNTIME_CACHE", Path("/cache/nets"))
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside a help text
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    raw = capsys.readouterr().out
    # The docstring's examples keep their lines and alignment (RawDescriptionHelpFormatter), as run from a fresh clone.
    assert ("\n    .venv/bin/python app.py --index DIR            # a folder made by "
            "`.venv/bin/python -m precompute.build_index`\n") in raw
    text = " ".join(raw.split())
    for option, help_text in [
        ("--runtime RUNTIME", "what runs the network: auto (default: onnxruntime if it loads, else keras; openvino "
                              "for bfloat16), onnxruntime, openvino, keras"),
        ("--precision {float32,bfloat16}", "bfloat16: openvino's reduced-precision inference (faster, less exact)"),
        ("--runtime-cache RUNTIME_CACHE", "folder of converted networks, reused across starts (default /cache/nets)"),
    ]:
        assert f"{option} {help_text}" in text, option


def test_runtime_options_and_their_defaults(monkeypatch, capsys):
    monkeypatch.setattr(app, "RUNTIME_CACHE", Path("/cache/nets"))
    args = app.parse_args([])
    assert app.runtime_kwargs(args) == {"runtime": "auto", "precision": "float32", "cache_dir": Path("/cache/nets")}
    args = app.parse_args(["--runtime", "openvino", "--precision", "bfloat16", "--runtime-cache", "nets"])
    assert app.runtime_kwargs(args) == {"runtime": "openvino", "precision": "bfloat16", "cache_dir": Path("nets")}
    assert app.parse_args(["--precision", "float32"]).precision == "float32"
    with pytest.raises(SystemExit):
        app.parse_args(["--precision", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_refusals_quote_at_most_40_or_80_characters_of_a_bad_value(served):
    engine, _, _ = served
    assert refusal(webapp.queries.check_k, engine, "9" * 50) == ("Bad K", f"K must be a whole number from 1 to 12; got {'9' * 40!r}.")
    assert refusal(webapp.queries.check_k, engine, "") == ("Bad K", "K must be a whole number from 1 to 12; got ''.")
    assert refusal(webapp.queries.parse_box, "9" * 100) == (
        "Bad box", f"A box is four whole numbers x0,y0,x1,y1 in pixels; got {'9' * 80!r}.")


def test_an_unreadable_query_is_refused_without_naming_its_path(tmp_path):
    missing = tmp_path / "gone.png"
    for source in (str(missing), missing):
        title, message = refusal(webapp.queries.decode_query, source)
        assert title == "Not a usable image" and message.startswith("This file cannot be used as a query: ")
        assert message.endswith(": 'the file'.") and str(tmp_path) not in message
    assert refusal(webapp.queries.decode_query, str(missing), "photo.png")[1].endswith(": 'photo.png'.")
    assert refusal(webapp.queries.decode_query, b"not an image") == (
        "Not a usable image", "This file cannot be used as a query: not a readable image (no image format recognised).")


def test_the_preview_says_what_it_shows():
    assert 'alt="the query as searched"><figcaption>' in webapp.thumbnails.preview_html(Image.new("RGB", (10, 10)))


def test_a_refusal_is_logged_as_one_line_without_a_traceback(caplog):
    caplog.set_level(logging.INFO, logger="landmark-search")
    error = webapp.queries.refused(webapp.queries.QueryError("Bad K", "K must be a whole number from 1 to 12; got '0'."))
    assert (error.title, error.message) == ("Bad K", "K must be a whole number from 1 to 12; got '0'.")
    assert not error.print_exception
    assert [r.getMessage() for r in caplog.records if r.name == "landmark-search"] == [
        "refused: Bad K: K must be a whole number from 1 to 12; got '0'."]


class Watched(webapp.gate.Gate):
    """The engine's gate, telling how many hold it."""

    def __init__(self):
        super().__init__(1, 4)
        self.held = 0

    def __enter__(self):
        self.held += 1
        return super().__enter__()

    def __exit__(self, *exc):
        self.held -= 1
        return super().__exit__(*exc)


def test_every_search_path_runs_the_engine_inside_the_gate(served, monkeypatch):
    engine, thumbs, root = served
    gate, seen = Watched(), []
    for name in ("search", "search_id"):
        work = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, work=work, name=name, **kw: seen.append((name, gate.held))
                            or work(*a, **kw))
    ctx = context(served, gate)
    webapp.handlers.search(ctx, editor(root / "p01.png"), 3)
    webapp.handlers.search_ui(ctx, file_data(root / "p02.png"), 3, "", None)
    webapp.links.run_link(ctx, webapp.links.read_link(ctx, {"id": "p06", "k": "3"}))
    assert seen == [("search", 1), ("search", 1), ("search_id", 1)] and gate.held == 0


def test_the_ui_searches_the_file_the_editor_holds(served):
    engine, thumbs, root = served
    ctx = context(served)
    # An example the app put in the editor, unedited: searched by its stored descriptor.
    _, records, _, searched = webapp.handlers.search_ui(ctx, file_data(thumbs.preview("p03")), 4, "", "p03")
    assert ids_scores(records) == engine.search_id("p03", 4).to_records() and searched["id"] == "p03"
    # An upload in the editor's full value, with a box: its crop.
    value = {"background": file_data(root / "p07.png"), "layers": [], "composite": None}
    _, records, _, searched = webapp.handlers.search_ui(ctx, value, 3, "0,0,40,30", None)
    assert ids_scores(records) == engine.search(
        Image.open(root / "p07.png").convert("RGB").crop((0, 0, 40, 30)), 3).to_records()
    assert searched["image"].size == (40, 30) and searched["id"] is None
    with pytest.raises(gr.Error) as caught:
        webapp.handlers.search_ui(ctx, "https://example.com/a.jpg", 3, "", None)
    assert (caught.value.title, caught.value.message) == ("Not an image", webapp.messages.URL_MESSAGE)


def test_uploaded_path_takes_only_files_gradio_checked(tmp_path):
    (tmp_path / "a.png").write_bytes(b"a")
    (tmp_path / "b.png").write_bytes(b"b")
    a, b = file_data(tmp_path / "a.png"), file_data(tmp_path / "b.png")
    # The image editor's full value: the composite, else the background.
    assert webapp.queries.uploaded_path({"background": a, "layers": [], "composite": b}) == str(tmp_path / "b.png")
    assert webapp.queries.uploaded_path({"background": a, "layers": [], "composite": None}) == str(tmp_path / "a.png")
    # A file dict is that file, whatever other keys it carries.
    assert webapp.queries.uploaded_path({**a, "background": b, "layers": []}) == str(tmp_path / "a.png")
    not_uploaded = ("Not an image", webapp.guard.NOT_UPLOADED)
    for value in ({}, {"path": "/etc/passwd"}, {"meta": {"_type": "gradio.FileData"}}, "/etc/passwd",
                  "/srv/background.png", 3):
        assert refusal(webapp.queries.uploaded_path, value) == not_uploaded, value
    for url in ("https://example.com/a.jpg", "http://example.com/composite.png"):
        assert refusal(webapp.queries.uploaded_path, url) == ("Not an image", webapp.queries.URL_MESSAGE)


def test_thumbnails_are_staged_in_their_own_folder(served, tmp_path, monkeypatch):
    engine, _, _ = served
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp"))  # the system temp folder unusable
    folder = tmp_path / "thumbs"
    folder.mkdir()
    thumbs = webapp.thumbnails.Thumbnails(engine.index, folder)
    assert Path(thumbs.jpeg("p05")).read_bytes() == engine.index.thumbnail("p05")
    assert Path(thumbs.preview("p05")).read_bytes() == engine.index.preview("p05")
    row = engine.index.row_of("p05")
    assert sorted(p.name for p in folder.iterdir()) == [f"{row}.jpg", f"{row}.preview.jpg"]
    assert not thumbs.is_unedited("p05", str(tmp_path / "gone.jpg"))


def test_run_query_defaults_to_no_crop(served):
    engine, thumbs, root = served
    picture = Image.open(root / "p01.png").convert("RGB")
    result, searched = webapp.queries.run_query(context(served), picture, 3)
    assert result.to_records() == engine.search(picture, 3).to_records() and searched["image"].size == (80, 60)
    assert (searched["box"], searched["k"], searched["file"]) == ("", 3, None)


def test_an_example_with_a_box_is_embedded_and_its_search_keeps_the_box(served):
    engine, thumbs, _ = served
    _, records, timings, searched = webapp.handlers.search(context(served), editor(thumbs.preview("p05")), 3,
                                                           " 0 0 40 30 ", "p05")
    assert ids_scores(records) == engine.search(shown(thumbs, "p05").crop((0, 0, 40, 30)), 3).to_records()
    assert searched["id"] == "p05" and searched["image"].size == (40, 30) and timings["embed_ms"] > 0
    assert searched["box"] == "0,0,40,30"  # as a link writes it
    line, _ = describe(timings, searched)
    assert "embedding" in line and "stored descriptor" not in line


def test_a_whole_file_is_decoded_once_as_the_build_decodes_it(served, tmp_path, monkeypatch):
    import retrieval.features

    engine, _, root = served
    Image.open(root / "p04.png").convert("RGB").resize((2400, 1800)).save(tmp_path / "p04.jpg", quality=90)
    decoded, real = [], retrieval.features.load_image

    def counted(*args, **kwargs):
        decoded.append(kwargs.get("draft_size"))
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval.features, "load_image", counted)
    monkeypatch.setattr(webapp.queries, "load_image", counted)
    _, records, _, searched = webapp.handlers.search(context(served), editor(tmp_path / "p04.jpg"), 3)
    assert len(decoded) == 1 and decoded[0] is not None  # once, with the build's JPEG draft
    monkeypatch.undo()
    assert ids_scores(records) == engine.search(str(tmp_path / "p04.jpg"), 3).to_records()
    # Decoded at a quarter of its size, as the build decodes it; the page keeps that picture.
    assert searched["image"].size == engine.decode(str(tmp_path / "p04.jpg")).image.size == (600, 450)


def test_changing_k_searches_again_only_when_results_are_shown(served, tmp_path):
    engine, _, root = served
    ctx = context(served)
    value = file_data(root / "p07.png")
    _, _, _, searched = webapp.handlers.search_ui(ctx, value, 4, "", None)
    _, records, _, again = webapp.handlers.search_again(ctx, value, 6, "", None, searched)
    assert ids_scores(records) == engine.search(str(root / "p07.png"), 6).to_records() and again["k"] == 6
    skip = gr.skip()
    assert webapp.handlers.search_again(ctx, value, 6, "", None, None) == (skip,) * 4  # nothing searched yet
    assert webapp.handlers.search_again(ctx, None, 6, "", None, searched) == (skip,) * 4  # the editor was cleared


def test_describe_shows_the_share_button_and_closes_the_match_panel():
    hidden, share = gr.update(visible=False), gr.update(value="", visible=False)
    assert webapp.handlers.describe(None, None) == ("", "", hidden, share, hidden, None)
    timings = {"total_ms": 3.0, "embed_ms": 2.0, "search_ms": 1.0, "runtime": "openvino"}
    line, _, button, old_link, panel, shown_id = webapp.handlers.describe(timings, {"id": None, "box": ""})
    assert line == "**Query time 3.0 ms**: embedding 2.0 ms (openvino) + search 1.0 ms"
    assert (button, old_link, panel, shown_id) == (gr.update(visible=True), share, hidden, None)
    line, *_ = webapp.handlers.describe(timings, {"id": "p01", "box": "1,2,30,40"})  # an index image's crop is embedded
    assert line == "**Query time 3.0 ms**: embedding 2.0 ms (openvino) + search 1.0 ms"


def test_app_imports_nothing_heavy_before_its_checks():
    import subprocess
    import sys

    # What app.py imports before it binds the port and checks the source: the refusals answer in a
    # fraction of a second (benchmarks.app_latency times them), TensorFlow and gradio come after.
    code = ("import sys, app; heavy = [m for m in ('gradio', 'tensorflow', 'scipy', 'sklearn', 'fastapi', 'PIL') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(app.__file__).parent, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def ids_scores(records) -> list[dict]:
    """The engine's own fields of API records ({rank, id, score, similarity}), without their image URLs."""
    return [{k: r[k] for k in ("rank", "id", "score", "similarity")} for r in records]
