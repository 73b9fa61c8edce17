"""The app's API endpoints and their guards in this process, over a tiny index.

tests/test_app.py checks the same endpoints over a live server (a subprocess); these call the
handlers behind them directly: POST /api/search (`http_search`) and GET /api/image, /search
(`search_api`), /match (`match_api`, `match`), the match panel of a clicked result (`pick_result`,
`show_match`), the upload check
(`check_upload`), the API's file input that refuses URLs (`query_file`, `refuse_urls`), the
engine budget shared by all of them (`Gate`) and the thumbnail placeholder.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from pathlib import Path

import gradio as gr
import gradio.processing_utils
import numpy as np
import pytest
from gradio.data_classes import FileData
from PIL import Image

import webapp.context
import webapp.gate
import webapp.guard
import webapp.handlers
import webapp.http_api
import webapp.messages
import webapp.queries
import webapp.thumbnails
import webapp.ui
from retrieval.matchview import match_view

from tests.test_app_handlers import N, served, uploads_under_pytest_temp  # noqa: F401  (the same tiny index; uploads)

LOGGER = "landmark-search"


def upload(path) -> dict:
    """The FileData dict Gradio hands an API handler for an uploaded file."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def picture(path) -> Image.Image:
    return Image.open(path).convert("RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def refusal(fn, *args, **kwargs) -> tuple[str, str]:
    """Returns (title, message) of the gr.Error that fn raises: what the user's toast shows."""
    with pytest.raises(gr.Error) as caught:
        fn(*args, **kwargs)
    return caught.value.title, caught.value.message


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


class Recorder:
    """Stands in for gr.Warning (same defaults): records (title, message) of each warning shown."""

    def __init__(self):
        self.shown = []

    def __call__(self, message="Warning issued.", duration=10, visible=True, title="Warning"):
        self.shown.append((title, message))


class Selected:
    """A gr.SelectData as the results gallery sends it: the index of the clicked result."""

    def __init__(self, index):
        self.index = index


class RecordingGate(webapp.gate.Gate):
    """A one-slot Gate that logs when it is entered and left, next to the engine work it guards."""

    def __init__(self, log: list):
        super().__init__(1, webapp.ui.QUEUE_MAX_SIZE)
        self.log = log

    def __enter__(self):
        self.log.append("enter")
        return super().__enter__()

    def __exit__(self, *exc):
        self.log.append("exit")
        return super().__exit__(*exc)


def spy(log: list, fn):
    def recorded(*args, **kwargs):
        log.append("work")
        return fn(*args, **kwargs)
    return recorded


# POST /api/search --------------------------------------------------------------------------------

def test_http_search_returns_the_results_confidence_and_timings(served):
    engine, thumbs, root = served
    data = (root / "p07.png").read_bytes()
    status, body = webapp.http_api.http_search(ctx_of(served), data, "4", "", root="http://host:1")
    assert status == 200 and set(body) == {"results", "confidence", "timings"}
    expected = engine.search(picture(root / "p07.png"), 4)
    assert body["confidence"] == expected.confidence.to_dict()
    # The records of /search: the engine's rows, with the URLs of each image's thumbnail and preview.
    assert body["results"] == [{**row, "thumbnail": f"http://host:1/api/image?id={row['id']}&size=thumbnail",
                                "preview": f"http://host:1/api/image?id={row['id']}&size=preview"}
                               for row in expected.to_records()]
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    timings = body["timings"]
    assert set(timings) == {"embed_ms", "search_ms", "total_ms", "runtime"} and timings["runtime"] == "keras"
    assert timings["embed_ms"] > 0 and timings["total_ms"] == pytest.approx(
        timings["embed_ms"] + timings["search_ms"], abs=0.011)


def test_http_search_takes_k_with_spaces_and_crops_to_the_box(served):
    engine, thumbs, root = served
    data = (root / "p02.png").read_bytes()
    status, body = webapp.http_api.http_search(ctx_of(served), data, " 3 ", "0,0,40,30")
    assert status == 200
    assert ids_scores(body["results"]) == engine.search(picture(root / "p02.png").crop((0, 0, 40, 30)), 3).to_records()
    assert ids_scores(body["results"]) != engine.search(picture(root / "p02.png"), 3).to_records()
    status, body = webapp.http_api.http_search(ctx_of(served), data, 12, "")  # an int k as it is
    assert status == 200 and len(body["results"]) == 12


@pytest.mark.parametrize("k", ["0", "13", "abc", "2.5", "-1", "", None])
def test_http_search_refuses_a_bad_k_with_400(served, k, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    status, body = webapp.http_api.http_search(ctx_of(served), (root / "p01.png").read_bytes(), k, "")
    message = f"K must be a whole number from 1 to 12; got {str(k)!r}."
    assert (status, body) == (400, {"error": message, "title": "Bad K"})
    assert messages(caplog) == [f"refused (HTTP): Bad K: {message}"]


def test_http_search_refuses_bad_queries_with_the_messages_of_the_gradio_api(served, tmp_path):
    engine, thumbs, root = served
    photo = (root / "p01.png").read_bytes()
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    whole = (root / "p01.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    cases = [  # (what HTTP is sent, the same query for /search, the HTTP status)
        ((photo, "3", "1,2,3"), (upload(root / "p01.png"), 3, "1,2,3"), 400),
        ((photo, "3", "10,10,10,20"), (upload(root / "p01.png"), 3, "10,10,10,20"), 400),
        ((None, "3", ""), (None, 3, ""), 400),
        ((b"", "3", ""), (upload(tmp_path / "empty.png"), 3, ""), 415),
        ((b"not a picture", "3", ""), (upload(tmp_path / "notes.png"), 3, ""), 415),
        ((whole[: len(whole) // 2], "3", ""), (upload(tmp_path / "cut.png"), 3, ""), 415),
    ]
    for (data, k, box), api_args, expected_status in cases:
        status, body = webapp.http_api.http_search(ctx_of(served), data, k, box)
        title, message = refusal(webapp.handlers.search_api, ctx_of(served), *api_args)
        assert (status, body) == (expected_status, {"error": message, "title": title}), (box, data and data[:8])
    assert webapp.http_api.http_search(ctx_of(served), b"not a picture", "3", "") == (415, {
        "error": "This file cannot be used as a query: not a readable image (no image format recognised).",
        "title": "Not a usable image"})
    assert webapp.http_api.http_search(ctx_of(served), b"", "3", "") == (415, {
        "error": "This file cannot be used as a query: the file is empty (0 bytes).", "title": "Not a usable image"})
    assert webapp.http_api.http_search(ctx_of(served), None, "3", "")[1] == {
        "error": webapp.messages.NO_IMAGE, "title": "No image"}
    assert webapp.http_api.http_search(ctx_of(served), photo, "3", "1,2,3")[1]["title"] == "Bad box"


def test_http_search_refuses_a_file_over_20mb_with_413(served, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    ctx = ctx_of(served)
    status, body = webapp.http_api.http_search(ctx, b"\0" * (webapp.http_api.MAX_FILE_BYTES + 1), "3", "")
    assert (status, body) == (413, {"error": "The file is over the 20 MB upload limit.", "title": "Too large"})
    assert messages(caplog) == ["refused (HTTP): Too large: The file is over the 20 MB upload limit."]
    # Exactly at the limit is not too large: a PNG padded to 20 MiB is searched, junk is not an image.
    photo = (root / "p05.png").read_bytes()
    padded = photo + b"\0" * (webapp.http_api.MAX_FILE_BYTES - len(photo))
    status, body = webapp.http_api.http_search(ctx, padded, "2", "")
    assert status == 200 and ids_scores(body["results"]) == engine.search(picture(root / "p05.png"), 2).to_records()
    assert webapp.http_api.http_search(ctx, b"\0" * webapp.http_api.MAX_FILE_BYTES, "2", "")[0] == 415


def test_http_search_is_busy_when_the_waiting_room_is_full(served):
    engine, thumbs, root = served
    photo = (root / "p03.png").read_bytes()
    gate = webapp.gate.Gate(1, webapp.ui.QUEUE_MAX_SIZE)
    assert all(gate.try_wait() for _ in range(webapp.ui.QUEUE_MAX_SIZE))  # 64 callers already wait
    assert webapp.http_api.http_search(ctx_of(served, gate), photo, "3", "") == (503, {
        "error": "64 queries are already waiting; try again in a moment.", "title": "Busy"})
    assert not gate.try_wait()  # a refused caller never counted, so none left either
    gate.done_waiting()
    assert webapp.http_api.http_search(ctx_of(served, gate), photo, "3", "")[0] == 200
    assert gate.try_wait() and not gate.try_wait()  # the one that ran has left the waiting room
    small = webapp.gate.Gate(1, 2)
    assert small.try_wait() and small.try_wait()
    assert webapp.http_api.http_search(ctx_of(served, small), photo, "3", "")[1]["error"].startswith(
        "2 queries are already waiting")


def test_http_search_leaves_the_waiting_room_after_each_query(served):
    engine, thumbs, root = served
    photo = (root / "p03.png").read_bytes()
    ctx = ctx_of(served, webapp.gate.Gate(1, 1))  # room for one waiting caller
    assert webapp.http_api.http_search(ctx, photo, "0", "")[0] == 400  # refused inside: still leaves
    for _ in range(2):
        assert webapp.http_api.http_search(ctx, photo, "3", "")[0] == 200


def test_http_search_holds_the_gate_while_the_engine_works(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(engine, "search", spy(log, engine.search))
    status, _ = webapp.http_api.http_search(ctx_of(served, RecordingGate(log)), (root / "p03.png").read_bytes(), "3", "")
    assert status == 200 and log == ["enter", "work", "exit"]


def test_search_api_crops_to_the_box_and_takes_the_editor_dict(served):
    engine, thumbs, root = served
    records, _, _ = webapp.handlers.search_api(ctx_of(served), upload(root / "p02.png"), 3, "0,0,40,30")
    assert ids_scores(records) == engine.search(picture(root / "p02.png").crop((0, 0, 40, 30)), 3).to_records()
    records, _, _ = webapp.handlers.search_api(ctx_of(served), {"background": upload(root / "p02.png")}, 3)
    assert ids_scores(records) == engine.search(picture(root / "p02.png"), 3).to_records()


def test_search_api_refuses_urls_paths_and_bad_k(served, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    ctx = ctx_of(served)
    assert refusal(webapp.handlers.search_api, ctx, "https://example.com/a.jpg", 3) == (
        "Not an image", webapp.messages.URL_MESSAGE)
    assert refusal(webapp.handlers.search_api, ctx, str(root / "p01.png"), 3) == ("Not an image", webapp.guard.NOT_UPLOADED)
    assert refusal(webapp.handlers.search_api, ctx, None, 3) == ("No image", webapp.messages.NO_IMAGE)
    assert refusal(webapp.handlers.search_api, ctx, upload(root / "p01.png"), 0) == (
        "Bad K", "K must be a whole number from 1 to 12; got '0'.")
    assert messages(caplog)[0] == f"refused: Not an image: {webapp.messages.URL_MESSAGE}"


def test_search_api_holds_the_gate_while_the_engine_works(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(engine, "search", spy(log, engine.search))
    webapp.handlers.search_api(ctx_of(served, RecordingGate(log)), upload(root / "p03.png"), 3)
    assert log == ["enter", "work", "exit"]


def test_match_shows_the_query_next_to_the_index_image(served):
    engine, thumbs, root = served
    query = picture(root / "p04.png")
    view, count = webapp.handlers.match(ctx_of(served), query, "p04")
    expected = match_view(query, engine.index.preview("p04"))
    assert count == expected.count and np.array_equal(pixels(view), pixels(expected.image))
    assert view.width > query.width  # both images, side by side


def test_match_refuses_an_unknown_id_and_cuts_it_to_80_characters(served):
    engine, thumbs, root = served
    query = picture(root / "p04.png")
    with pytest.raises(webapp.queries.QueryError) as caught:
        webapp.handlers.match(ctx_of(served), query, "../etc/passwd")
    assert (caught.value.title, str(caught.value)) == ("Unknown image", "'../etc/passwd' is not in this index.")
    with pytest.raises(webapp.queries.QueryError) as caught:
        webapp.handlers.match(ctx_of(served), query, "x" * 100)
    assert (caught.value.title, str(caught.value)) == ("Unknown image", f"{'x' * 80!r} is not in this index.")


def test_match_holds_the_gate_while_matching(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(webapp.handlers, "match_view", spy(log, webapp.handlers.match_view))
    webapp.handlers.match(ctx_of(served, RecordingGate(log)), picture(root / "p04.png"), "p04")
    assert log == ["enter", "work", "exit"]


def test_match_api_returns_the_picture_and_the_count(served):
    engine, thumbs, root = served
    view, info = webapp.handlers.match_api(ctx_of(served), upload(root / "p04.png"), id="p04")  # no box
    expected = match_view(picture(root / "p04.png"), engine.index.preview("p04"))
    assert info == {"id": "p04", "matches": expected.count}
    assert np.array_equal(pixels(view), pixels(expected.image))


def test_match_api_crops_the_query_to_the_box(served):
    engine, thumbs, root = served
    view, info = webapp.handlers.match_api(ctx_of(served), upload(root / "p04.png"), "0,0,40,30", "p05")
    expected = match_view(picture(root / "p04.png").crop((0, 0, 40, 30)), engine.index.preview("p05"))
    assert info == {"id": "p05", "matches": expected.count}
    assert np.array_equal(pixels(view), pixels(expected.image))
    assert view.height == max(30, Image.open(io.BytesIO(engine.index.preview("p05"))).height)


def test_match_api_refusals(served, tmp_path, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    ctx = ctx_of(served)
    query = upload(root / "p04.png")
    empty = "The box 10,10,10,20 holds no pixel of this 80 × 60 image: drag a box on the image, or clear the box."
    assert refusal(webapp.handlers.match_api, ctx, query, "", "nope") == ("Unknown image", "'nope' is not in this index.")
    assert refusal(webapp.handlers.match_api, ctx, query) == ("Unknown image", "'' is not in this index.")
    assert refusal(webapp.handlers.match_api, ctx, query, "10,10,10,20", "p04") == ("Empty crop", empty)
    assert refusal(webapp.handlers.match_api, ctx, query, "1,2", "p04") == (
        "Bad box", "A box is four whole numbers x0,y0,x1,y1 in pixels; got '1,2'.")
    assert refusal(webapp.handlers.match_api, ctx, "https://example.com/a.jpg", "", "p04") == (
        "Not an image", webapp.messages.URL_MESSAGE)
    assert refusal(webapp.handlers.match_api, ctx, None, "", "p04") == ("No image", webapp.messages.NO_IMAGE)
    (tmp_path / "notes.png").write_text("not a picture")
    assert refusal(webapp.handlers.match_api, ctx, upload(tmp_path / "notes.png"), "", "p04") == (
        "Not a usable image", "This file cannot be used as a query: not a readable image (no image format recognised).")
    assert messages(caplog)[:3] == [
        "refused: Unknown image: 'nope' is not in this index.",
        "refused: Unknown image: '' is not in this index.",
        f"refused: Empty crop: {empty}",
    ]


def test_match_api_holds_the_gate_while_matching(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(webapp.handlers, "match_view", spy(log, webapp.handlers.match_view))
    webapp.handlers.match_api(ctx_of(served, RecordingGate(log)), upload(root / "p04.png"), "", "p04")
    assert log == ["enter", "exit", "enter", "work", "exit"]  # decoding, then matching: each under the gate


def test_show_match_refuses_a_result_no_longer_in_the_index(served, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    searched = {"id": None, "image": picture(root / "p06.png")}
    assert refusal(webapp.handlers.show_match, ctx_of(served), searched, "gone") == (
        "Unknown image", "'gone' is not in this index.")
    assert messages(caplog) == ["refused: Unknown image: 'gone' is not in this index."]


def test_show_match_holds_the_gate_while_matching(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(webapp.handlers, "match_view", spy(log, webapp.handlers.match_view))
    searched = {"id": None, "image": picture(root / "p06.png")}
    webapp.handlers.show_match(ctx_of(served, RecordingGate(log)), searched, "p01")
    assert log == ["enter", "work", "exit"]


def test_check_upload_keeps_a_usable_image_and_clears_the_box(served, monkeypatch):
    _, _, root = served
    shown = Recorder()
    monkeypatch.setattr(webapp.handlers.gr, "Warning", shown)
    keep = ({"__type__": "update"}, "", None)
    assert webapp.handlers.check_upload(ctx_of(served), upload(root / "p01.png")) == keep
    assert webapp.handlers.check_upload(ctx_of(served), {"background": upload(root / "p01.png"), "layers": []}) == keep
    assert webapp.handlers.check_upload(ctx_of(served), None) == keep  # a cleared editor
    assert shown.shown == []


def test_check_upload_clears_an_unusable_file_and_says_why(served, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    shown = Recorder()
    monkeypatch.setattr(webapp.handlers.gr, "Warning", shown)
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    ctx = ctx_of(served)
    assert webapp.handlers.check_upload(ctx, upload(tmp_path / "notes.png")) == (None, "", None)
    assert webapp.handlers.check_upload(ctx, upload(tmp_path / "empty.png")) == (None, "", None)
    assert webapp.handlers.check_upload(ctx, "https://example.com/a.jpg") == (None, "", None)
    unreadable = "This file cannot be used as a query: not a readable image (no image format recognised)."
    assert shown.shown == [
        ("Not a usable image", unreadable),
        ("Not a usable image", "This file cannot be used as a query: the file is empty (0 bytes)."),
        ("Not an image", webapp.messages.URL_MESSAGE),
    ]
    assert str(tmp_path) not in " ".join(m for _, m in shown.shown)  # no server path is shown
    assert messages(caplog)[0] == f"refused upload: Not a usable image: {unreadable}"
    assert len(messages(caplog)) == 3


class Fetching:
    """A component whose fetch records what it was asked for instead of fetching anything."""

    def __init__(self):
        self.asked = []

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        self.asked.append(url_or_file_path)
        return f"cached {url_or_file_path}"


def test_refuse_urls_refuses_a_url_before_any_download(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    component = Fetching()
    assert webapp.queries.refuse_urls(component) is component
    for url in ("https://example.com/a.jpg", "http://127.0.0.1/x.png"):
        with pytest.raises(gr.Error) as caught:
            asyncio.run(component.async_move_resource_to_block_cache(url))
        assert (caught.value.title, caught.value.message) == ("Not an image", webapp.messages.URL_MESSAGE)
    assert component.asked == []
    assert messages(caplog) == [f"refused: Not an image: {webapp.messages.URL_MESSAGE}"] * 2


def test_refuse_urls_passes_files_and_none_through(tmp_path):
    component = webapp.queries.refuse_urls(Fetching())
    fetch = component.async_move_resource_to_block_cache
    assert asyncio.run(fetch(str(tmp_path / "a.png"))) == f"cached {tmp_path / 'a.png'}"
    assert asyncio.run(fetch(tmp_path / "b.png")) == f"cached {tmp_path / 'b.png'}"
    assert asyncio.run(fetch(None)) == "cached None"
    assert component.asked == [str(tmp_path / "a.png"), tmp_path / "b.png", None]


def test_query_file_is_a_file_input_that_refuses_urls(tmp_path, monkeypatch):
    downloads = []

    async def download(url, *args, **kwargs):  # Gradio's own fetch: must never be reached
        downloads.append(url)
        raise AssertionError("a URL was fetched")

    monkeypatch.setattr(gradio.processing_utils, "async_ssrf_protected_download", download)
    component = webapp.queries.query_file()
    assert component.label == "query image" and component.value is None
    assert component.api_info() == {
        **FileData.model_json_schema(),
        "additional_description": "a file (handle_file(path)), or the image editor's dict {\"background\": file}; "
                                  "not a URL",
    }
    with pytest.raises(gr.Error) as caught:
        asyncio.run(component.async_move_resource_to_block_cache("https://example.com/a.jpg"))
    assert (caught.value.title, caught.value.message) == ("Not an image", webapp.messages.URL_MESSAGE) and downloads == []
    # An upload already in the component's cache is what Gradio's own method returns, as it is.
    component.GRADIO_CACHE = str(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    assert asyncio.run(component.async_move_resource_to_block_cache(str(tmp_path / "a.png"))) == str(tmp_path / "a.png")
    assert asyncio.run(component.async_move_resource_to_block_cache(None)) is None
    assert webapp.queries.query_file() is not component  # each endpoint gets its own input


# The engine budget ---------------------------------------------------------------------------------

def enters(gate: webapp.gate.Gate, wait: float = 0.3):
    """Starts a thread that enters `gate` and leaves at once; returns (whether it got in within `wait` s, thread)."""
    inside = threading.Event()

    def enter():
        with gate:
            inside.set()

    worker = threading.Thread(target=enter, daemon=True)
    worker.start()
    return inside.wait(wait), worker


@pytest.mark.parametrize("concurrency, slots", [(1, 1), (0, 1), (2, 2)])
def test_gate_lets_concurrency_queries_run_at_once(concurrency, slots):
    gate = webapp.gate.Gate(concurrency, 5)
    for _ in range(slots):
        gate.__enter__()
    got_in, worker = enters(gate)
    assert not got_in  # every slot taken: the next query waits
    gate.__exit__(None, None, None)
    worker.join(5)
    assert not worker.is_alive()  # and runs once a slot is free
    for _ in range(slots - 1):
        gate.__exit__(None, None, None)
    with gate:
        pass


def test_gate_counts_waiting_callers_up_to_max_waiting():
    gate = webapp.gate.Gate(1, 3)
    assert gate.max_waiting == 3
    assert [gate.try_wait() for _ in range(4)] == [True, True, True, False]
    gate.done_waiting()
    assert [gate.try_wait() for _ in range(2)] == [True, False]
    for _ in range(3):
        gate.done_waiting()
    assert [gate.try_wait() for _ in range(4)] == [True, True, True, False]
    assert [webapp.gate.Gate(1, 0).try_wait(), webapp.gate.Gate(1, 1).try_wait()] == [False, True]


def test_gate_counts_waiting_callers_from_several_threads():
    gate = webapp.gate.Gate(1, 50)
    answers = []
    workers = [threading.Thread(target=lambda: answers.extend(gate.try_wait() for _ in range(10)))
               for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(5)
    assert sorted(answers) == [False] * 30 + [True] * 50


# The placeholder of an image without a thumbnail ---------------------------------------------------

class NoThumbnails:
    """An index of one image stored without thumbnail or preview (`--vectors`)."""

    def row_of(self, image_id):
        return 0

    def thumbnail(self, image_id):
        return b""

    def preview(self, image_id):
        return b""


def test_the_placeholder_is_a_grey_192_by_144_image():
    image = webapp.thumbnails.Thumbnails.image_placeholder()
    assert image.mode == "RGB" and image.size == (192, 144)
    assert image.getcolors() == [(192 * 144, (200, 200, 200))]


def test_an_image_without_a_thumbnail_is_served_as_the_grey_placeholder(tmp_path):
    thumbs = webapp.thumbnails.Thumbnails(NoThumbnails(), tmp_path)
    for path in (thumbs.jpeg("a"), thumbs.preview("a")):
        served = Image.open(path)
        assert served.format == "JPEG" and served.size == (192, 144)
        assert np.abs(pixels(served).astype(int) - 200).max() <= 2
    assert Path(thumbs.jpeg("a")).read_bytes() == thumbs._placeholder_jpeg()


def test_the_http_route_defaults_k_to_what_the_index_holds_and_refuses_other_digits(served):
    # POST /api/search without k on a 12-image index answers all 12, as /search's default does
    # (min(20, images)); "²" passes str.isdigit but is not a K: refused with 400, not a server error.
    import fastapi
    from fastapi.testclient import TestClient

    engine, thumbnails, root = served
    api = fastapi.FastAPI()
    webapp.http_api.add_http_api(api, ctx_of(served, webapp.gate.Gate(1, 4)))
    data = (root / "p03.png").read_bytes()
    with TestClient(api) as client:
        answer = client.post("/api/search", files={"image": ("p03.png", data, "image/png")})
        assert answer.status_code == 200
        assert len(answer.json()["results"]) == N and answer.json()["results"][0]["id"] == "p03"
        assert answer.json()["results"][0]["thumbnail"] == "http://testserver/api/image?id=p03&size=thumbnail"
        assert len(client.post("/api/search?k=5", files={"image": ("p03.png", data)}).json()["results"]) == 5
        for k in ("²", "١٢"):  # a superscript two, Arabic-Indic twelve
            bad = client.post("/api/search", params={"k": k}, files={"image": ("p03.png", data)})
            assert bad.status_code == 400, bad.text
            assert bad.json() == {"title": "Bad K", "error": f"K must be a whole number from 1 to {N}; got {k!r}."}


def ctx_of(served, gate=None) -> webapp.context.AppContext:
    engine, thumbs, _ = served
    return webapp.context.AppContext(engine, thumbs, gate or webapp.gate.Gate(1, 1))


def ids_scores(records) -> list[dict]:
    """The engine's own fields of API records ({rank, id, score, similarity}), without their image URLs."""
    return [{k: r[k] for k in ("rank", "id", "score", "similarity")} for r in records]


def test_one_message_for_an_empty_file_on_every_way_in(served, tmp_path, monkeypatch):
    # The page's upload check and its search, /search, and POST /api/search: one fault, one message.
    engine, thumbs, root = served
    (tmp_path / "empty.jpg").write_bytes(b"")
    said = "This file cannot be used as a query: the file is empty (0 bytes)."
    shown = Recorder()
    monkeypatch.setattr(webapp.handlers.gr, "Warning", shown)
    webapp.handlers.check_upload(ctx_of(served), upload(tmp_path / "empty.jpg"))
    assert shown.shown == [("Not a usable image", said)]
    assert refusal(webapp.handlers.search_ui, ctx_of(served), upload(tmp_path / "empty.jpg"), 3, "", None) == (
        "Not a usable image", said)
    assert refusal(webapp.handlers.search_api, ctx_of(served), upload(tmp_path / "empty.jpg"), 3, "") == (
        "Not a usable image", said)
    assert refusal(webapp.handlers.match_api, ctx_of(served), upload(tmp_path / "empty.jpg"), "", "p01") == (
        "Not a usable image", said)
    assert webapp.http_api.http_search(ctx_of(served), b"", 3, "") == (415, {"error": said,
                                                                            "title": "Not a usable image"})


def test_a_truncated_file_is_said_in_words_not_in_pythons(served, tmp_path):
    _, _, root = served
    buffer = io.BytesIO()
    picture(root / "p03.png").resize((400, 300)).save(buffer, format="JPEG")
    cut = buffer.getvalue()[:3000]
    (tmp_path / "cut.jpg").write_bytes(cut)
    said = ("This file cannot be used as a query: the file is cut short: it ends before the image does (an "
            "interrupted download or copy?).")
    assert refusal(webapp.handlers.search_api, ctx_of(served), upload(tmp_path / "cut.jpg"), 3, "") == (
        "Not a usable image", said)
    assert webapp.http_api.http_search(ctx_of(served), cut, 3, "")[1]["error"] == said
    assert "OSError" not in said


def test_search_api_returns_records_with_image_urls_and_timings_and_no_file(served):
    engine, thumbs, root = served
    out = webapp.handlers.search_api(ctx_of(served), upload(root / "p07.png"), 4, root="https://me.hf.space")  # box left out
    assert len(out) == 3
    records, timings, confidence = out
    expected = engine.search(picture(root / "p07.png"), 4)
    assert ids_scores(records) == expected.to_records() and confidence == expected.confidence.to_dict()
    assert [r["thumbnail"] for r in records] == [f"https://me.hf.space/api/image?id={i}&size=thumbnail"
                                                 for i in expected.ids]
    assert [r["preview"] for r in records] == [f"https://me.hf.space/api/image?id={i}&size=preview" for i in expected.ids]
    assert set(timings) == {"embed_ms", "search_ms", "total_ms", "runtime"} and timings["embed_ms"] > 0
    assert "path" not in json.dumps(out)  # nothing a client would download


def test_a_result_click_opens_the_panel_at_once_with_the_result_at_its_largest_stored_size(served):
    engine, thumbs, root = served
    ctx = ctx_of(served)
    _, records, _, _ = webapp.handlers.search(ctx, str(root / "p06.png"), 4)
    panel, title, path, line, view, share, shown = webapp.handlers.pick_result(ctx, records, Selected(2))
    image_id = records[2]["id"]
    assert panel == gr.update(visible=True) and shown == image_id
    assert Path(path).read_bytes() == engine.index.preview(image_id)  # the largest size the index stores
    width, height = Image.open(io.BytesIO(engine.index.preview(image_id))).size
    assert title == (f"### #3 `{image_id}` · similarity {records[2]['similarity']:.3f}\n"
                     f"<small>Shown at its largest stored size, {width} × {height} px.</small>")
    assert line == "*Finding the matching points…*" and view == gr.update(value=None, visible=False)
    assert share == gr.update(value="", visible=False)  # the page changed: an old link no longer says it


def test_show_match_draws_the_match_view_of_the_result_in_the_panel(served):
    engine, thumbs, root = served
    ctx = ctx_of(served)
    _, records, _, searched = webapp.handlers.search(ctx, str(root / "p06.png"), 4)
    for index in (0, 3):
        image_id = records[index]["id"]
        update, line = webapp.handlers.show_match(ctx, searched, image_id, records)
        expected = match_view(searched["image"], engine.index.preview(image_id))
        assert set(update) == {"__type__", "value", "visible"} and update["visible"] is True
        assert np.array_equal(pixels(update["value"]), pixels(expected.image))
        assert line == webapp.handlers.match_line(expected.count, image_id, index + 1)


def test_the_match_line_says_what_its_number_means():
    assert webapp.handlers.match_line(42, "a/b", 3) == (
        "**42 matching points** between the query and #3 `a/b`: details found in both photos (SIFT) that agree on "
        "one geometry (RANSAC), joined by lines.")
    assert webapp.handlers.match_line(1, "a", None).startswith("**1 matching point** between the query and `a`:")
    zero = webapp.handlers.match_line(0, "a", 2)
    assert zero.startswith("**0 matching points** between the query and #2 `a`: no detail of the query was found again")
    assert "ranked by its overall look" in zero


def test_the_panel_stays_closed_without_a_search_or_outside_the_results(served):
    engine, thumbs, root = served
    ctx = ctx_of(served)
    _, records, _, searched = webapp.handlers.search(ctx, str(root / "p06.png"), 4)
    for rows, index in (([], 0), (None, 0), (records, 4), (records, -1), (records, 10)):
        out = webapp.handlers.pick_result(ctx, rows, Selected(index))
        assert out[0] == gr.update(visible=False) and out[-1] is None
    hidden = (gr.update(value=None, visible=False), "")
    for state, image_id in ((None, "p01"), ({}, "p01"), (searched, None)):
        assert webapp.handlers.show_match(ctx, state, image_id) == hidden


def test_the_records_image_urls_serve_the_stored_thumbnail_and_preview(served):
    import fastapi
    from fastapi.testclient import TestClient

    engine, thumbnails, root = served
    api = fastapi.FastAPI()
    webapp.http_api.add_http_api(api, ctx_of(served, webapp.gate.Gate(1, 4)))
    with TestClient(api) as client:
        record = client.post("/api/search?k=1", files={"image": ("p05.png", (root / "p05.png").read_bytes())}).json()[
            "results"][0]
        for size, stored in (("thumbnail", engine.index.thumbnail), ("preview", engine.index.preview)):
            answer = client.get(record[size])
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
            assert answer.content == stored(record["id"]) and "max-age" in answer.headers["cache-control"]
        # Only an index id names an image; nothing else is read, whatever it says.
        for image_id in ("../../etc/passwd", "/etc/hostname", "p05.png", ""):
            answer = client.get("/api/image", params={"id": image_id})
            assert answer.status_code == 404 and answer.json()["title"] == "Unknown image", image_id
        answer = client.get("/api/image", params={"id": "p05", "size": "original"})
        assert answer.status_code == 400
        assert answer.json() == {"title": "Bad size", "error": "size is thumbnail or preview; got 'original'."}
