"""The app's API endpoints and their guards in this process, over a tiny index.

tests/test_app.py checks the same endpoints over a live server (a subprocess); these call the
handlers behind them directly: POST /api/search (`http_search`), /search (`search_api`), /match
(`match_api`, `match`), the match view of a clicked result (`show_match`), the upload check
(`check_upload`), the API's file input that refuses URLs (`query_file`, `refuse_urls`), the
engine budget shared by all of them (`Gate`) and the thumbnail placeholder.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from pathlib import Path

import gradio as gr
import gradio.processing_utils
import numpy as np
import pytest
from gradio.data_classes import FileData
from PIL import Image

import webapp.gate
import webapp.guard
import webapp.handlers
import webapp.http_api
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

def test_http_search_returns_the_results_and_timings(served):
    engine, thumbs, root = served
    data = (root / "p07.png").read_bytes()
    status, body = webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), data, "4", "")
    assert status == 200 and set(body) == {"results", "timings"}
    assert body["results"] == engine.search(picture(root / "p07.png"), 4).to_records()
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    timings = body["timings"]
    assert set(timings) == {"embed_ms", "search_ms", "total_ms", "runtime"} and timings["runtime"] == "keras"
    assert timings["embed_ms"] > 0 and timings["total_ms"] == pytest.approx(
        timings["embed_ms"] + timings["search_ms"], abs=0.011)


def test_http_search_takes_k_with_spaces_and_crops_to_the_box(served):
    engine, thumbs, root = served
    data = (root / "p02.png").read_bytes()
    status, body = webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), data, " 3 ", "0,0,40,30")
    assert status == 200
    assert body["results"] == engine.search(picture(root / "p02.png").crop((0, 0, 40, 30)), 3).to_records()
    assert body["results"] != engine.search(picture(root / "p02.png"), 3).to_records()
    status, body = webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), data, 12, "")  # an int k as it is
    assert status == 200 and len(body["results"]) == 12


@pytest.mark.parametrize("k", ["0", "13", "abc", "2.5", "-1", "", None])
def test_http_search_refuses_a_bad_k_with_400(served, k, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    status, body = webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), (root / "p01.png").read_bytes(), k, "")
    message = f"K must be a whole number from 1 to 12; got {str(k)!r}."
    assert (status, body) == (400, {"error": message, "title": "Bad K"})
    assert messages(caplog) == [f"refused (HTTP): Bad K: {message}"]


def test_http_search_refuses_bad_queries_with_the_messages_of_the_gradio_api(served, tmp_path):
    engine, thumbs, root = served
    photo = (root / "p01.png").read_bytes()
    (tmp_path / "notes.png").write_text("not a picture")
    cases = [  # (what HTTP is sent, the same query for /search, the HTTP status)
        ((photo, "3", "1,2,3"), (upload(root / "p01.png"), 3, "1,2,3"), 400),
        ((photo, "3", "10,10,10,20"), (upload(root / "p01.png"), 3, "10,10,10,20"), 400),
        ((None, "3", ""), (None, 3, ""), 400),
        ((b"", "3", ""), (None, 3, ""), 400),
        ((b"not a picture", "3", ""), (upload(tmp_path / "notes.png"), 3, ""), 415),
    ]
    for (data, k, box), api_args, expected_status in cases:
        status, body = webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), data, k, box)
        title, message = refusal(webapp.handlers.search_api, engine, thumbs, webapp.gate.Gate(1, 1), *api_args)
        assert (status, body) == (expected_status, {"error": message, "title": title}), (box, data and data[:8])
    assert webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), b"not a picture", "3", "") == (415, {
        "error": "This file cannot be used as a query: not a readable image (no image format recognised).",
        "title": "Not a usable image"})
    assert webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), None, "3", "")[1]["title"] == "No image"
    assert webapp.http_api.http_search(engine, thumbs, webapp.gate.Gate(1, 1), photo, "3", "1,2,3")[1]["title"] == "Bad box"


def test_http_search_refuses_a_file_over_20mb_with_413(served, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    gate = webapp.gate.Gate(1, 1)
    status, body = webapp.http_api.http_search(engine, thumbs, gate, b"\0" * (webapp.http_api.MAX_FILE_BYTES + 1), "3", "")
    assert (status, body) == (413, {"error": "The file is over the 20mb upload limit.", "title": "Too large"})
    assert messages(caplog) == ["refused (HTTP): Too large: The file is over the 20mb upload limit."]
    # Exactly at the limit is not too large: a PNG padded to 20 MiB is searched, junk is not an image.
    photo = (root / "p05.png").read_bytes()
    padded = photo + b"\0" * (webapp.http_api.MAX_FILE_BYTES - len(photo))
    status, body = webapp.http_api.http_search(engine, thumbs, gate, padded, "2", "")
    assert status == 200 and body["results"] == engine.search(picture(root / "p05.png"), 2).to_records()
    assert webapp.http_api.http_search(engine, thumbs, gate, b"\0" * webapp.http_api.MAX_FILE_BYTES, "2", "")[0] == 415


def test_http_search_is_busy_when_the_waiting_room_is_full(served):
    engine, thumbs, root = served
    photo = (root / "p03.png").read_bytes()
    gate = webapp.gate.Gate(1, webapp.ui.QUEUE_MAX_SIZE)
    assert all(gate.try_wait() for _ in range(webapp.ui.QUEUE_MAX_SIZE))  # 64 callers already wait
    assert webapp.http_api.http_search(engine, thumbs, gate, photo, "3", "") == (503, {
        "error": "64 queries are already waiting; try again in a moment.", "title": "Busy"})
    assert not gate.try_wait()  # a refused caller never counted, so none left either
    gate.done_waiting()
    assert webapp.http_api.http_search(engine, thumbs, gate, photo, "3", "")[0] == 200
    assert gate.try_wait() and not gate.try_wait()  # the one that ran has left the waiting room
    small = webapp.gate.Gate(1, 2)
    assert small.try_wait() and small.try_wait()
    assert webapp.http_api.http_search(engine, thumbs, small, photo, "3", "")[1]["error"].startswith("2 queries are already waiting")


def test_http_search_leaves_the_waiting_room_after_each_query(served):
    engine, thumbs, root = served
    photo = (root / "p03.png").read_bytes()
    gate = webapp.gate.Gate(1, 1)  # room for one waiting caller
    assert webapp.http_api.http_search(engine, thumbs, gate, photo, "0", "")[0] == 400  # refused inside: still leaves
    for _ in range(2):
        assert webapp.http_api.http_search(engine, thumbs, gate, photo, "3", "")[0] == 200


def test_http_search_holds_the_gate_while_the_engine_works(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(engine, "search", spy(log, engine.search))
    status, _ = webapp.http_api.http_search(engine, thumbs, RecordingGate(log), (root / "p03.png").read_bytes(), "3", "")
    assert status == 200 and log == ["enter", "work", "exit"]


# /search -----------------------------------------------------------------------------------------

def test_search_api_returns_gallery_records_and_timings(served):
    engine, thumbs, root = served
    out = webapp.handlers.search_api(engine, thumbs, webapp.gate.Gate(1, 1), upload(root / "p07.png"), 4)  # box left out
    assert len(out) == 3
    gallery, records, timings = out
    expected = engine.search(picture(root / "p07.png"), 4)
    assert records == expected.to_records()
    assert gallery == [(thumbs.jpeg(r["id"]), f"#{r['rank']} · {r['score']:.3f}\n{r['id']}") for r in records]
    assert [Path(f).read_bytes() for f, _ in gallery] == [engine.index.thumbnail(i) for i in expected.ids]
    assert set(timings) == {"embed_ms", "search_ms", "total_ms", "runtime"} and timings["embed_ms"] > 0


def test_search_api_crops_to_the_box_and_takes_the_editor_dict(served):
    engine, thumbs, root = served
    _, records, _ = webapp.handlers.search_api(engine, thumbs, webapp.gate.Gate(1, 1), upload(root / "p02.png"), 3, "0,0,40,30")
    assert records == engine.search(picture(root / "p02.png").crop((0, 0, 40, 30)), 3).to_records()
    _, records, _ = webapp.handlers.search_api(engine, thumbs, webapp.gate.Gate(1, 1), {"background": upload(root / "p02.png")}, 3)
    assert records == engine.search(picture(root / "p02.png"), 3).to_records()


def test_search_api_refuses_urls_paths_and_bad_k(served, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    gate = webapp.gate.Gate(1, 1)
    assert refusal(webapp.handlers.search_api, engine, thumbs, gate, "https://example.com/a.jpg", 3) == (
        "Not an image", webapp.queries.URL_MESSAGE)
    assert refusal(webapp.handlers.search_api, engine, thumbs, gate, str(root / "p01.png"), 3) == ("Not an image", webapp.guard.NOT_UPLOADED)
    assert refusal(webapp.handlers.search_api, engine, thumbs, gate, None, 3) == (
        "No image", "Upload an image first (or pick one of the examples).")
    assert refusal(webapp.handlers.search_api, engine, thumbs, gate, upload(root / "p01.png"), 0) == (
        "Bad K", "K must be a whole number from 1 to 12; got '0'.")
    assert messages(caplog)[0] == f"refused: Not an image: {webapp.queries.URL_MESSAGE}"


def test_search_api_holds_the_gate_while_the_engine_works(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(engine, "search", spy(log, engine.search))
    webapp.handlers.search_api(engine, thumbs, RecordingGate(log), upload(root / "p03.png"), 3)
    assert log == ["enter", "work", "exit"]


# /match and the match view -----------------------------------------------------------------------

def test_match_shows_the_query_next_to_the_index_image(served):
    engine, thumbs, root = served
    query = picture(root / "p04.png")
    view, count = webapp.handlers.match(engine, thumbs, query, "p04")
    expected = match_view(query, engine.index.preview("p04"))
    assert count == expected.count and np.array_equal(pixels(view), pixels(expected.image))
    assert view.width > query.width  # both images, side by side
    view, count = webapp.handlers.match(engine, thumbs, query, "p04", gate=webapp.gate.Gate(1, 1))
    assert count == expected.count and np.array_equal(pixels(view), pixels(expected.image))


def test_match_refuses_an_unknown_id_and_cuts_it_to_80_characters(served):
    engine, thumbs, root = served
    query = picture(root / "p04.png")
    with pytest.raises(webapp.queries.QueryError) as caught:
        webapp.handlers.match(engine, thumbs, query, "../etc/passwd")
    assert (caught.value.title, str(caught.value)) == ("Unknown image", "'../etc/passwd' is not in this index.")
    with pytest.raises(webapp.queries.QueryError) as caught:
        webapp.handlers.match(engine, thumbs, query, "x" * 100)
    assert (caught.value.title, str(caught.value)) == ("Unknown image", f"{'x' * 80!r} is not in this index.")


def test_match_holds_the_gate_while_matching(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(webapp.handlers, "match_view", spy(log, webapp.handlers.match_view))
    webapp.handlers.match(engine, thumbs, picture(root / "p04.png"), "p04", gate=RecordingGate(log))
    assert log == ["enter", "work", "exit"]


def test_match_api_returns_the_picture_and_the_count(served):
    engine, thumbs, root = served
    view, info = webapp.handlers.match_api(engine, thumbs, webapp.gate.Gate(1, 1), upload(root / "p04.png"), id="p04")  # no box
    expected = match_view(picture(root / "p04.png"), engine.index.preview("p04"))
    assert info == {"id": "p04", "matches": expected.count}
    assert np.array_equal(pixels(view), pixels(expected.image))


def test_match_api_crops_the_query_to_the_box(served):
    engine, thumbs, root = served
    view, info = webapp.handlers.match_api(engine, thumbs, webapp.gate.Gate(1, 1), upload(root / "p04.png"), "0,0,40,30", "p05")
    expected = match_view(picture(root / "p04.png").crop((0, 0, 40, 30)), engine.index.preview("p05"))
    assert info == {"id": "p05", "matches": expected.count}
    assert np.array_equal(pixels(view), pixels(expected.image))
    assert view.height == max(30, Image.open(io.BytesIO(engine.index.preview("p05"))).height)


def test_match_api_refusals(served, tmp_path, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    gate = webapp.gate.Gate(1, 1)
    query = upload(root / "p04.png")
    assert refusal(webapp.handlers.match_api, engine, thumbs, gate, query, "", "nope") == (
        "Unknown image", "'nope' is not in this index.")
    assert refusal(webapp.handlers.match_api, engine, thumbs, gate, query) == ("Unknown image", "'' is not in this index.")
    assert refusal(webapp.handlers.match_api, engine, thumbs, gate, query, "10,10,10,20", "p04") == (
        "Empty crop", "The crop is empty: the crop (10, 10, 10, 20) is empty on a 80x60 image.")
    assert refusal(webapp.handlers.match_api, engine, thumbs, gate, query, "1,2", "p04") == (
        "Bad box", "A box is four whole numbers x0,y0,x1,y1 in pixels; got '1,2'.")
    assert refusal(webapp.handlers.match_api, engine, thumbs, gate, "https://example.com/a.jpg", "", "p04") == (
        "Not an image", webapp.queries.URL_MESSAGE)
    (tmp_path / "notes.png").write_text("not a picture")
    assert refusal(webapp.handlers.match_api, engine, thumbs, gate, upload(tmp_path / "notes.png"), "", "p04") == (
        "Not a usable image", "This file cannot be used as a query: not a readable image (no image format recognised).")
    assert messages(caplog)[:3] == [
        "refused: Unknown image: 'nope' is not in this index.",
        "refused: Unknown image: '' is not in this index.",
        "refused: Empty crop: The crop is empty: the crop (10, 10, 10, 20) is empty on a 80x60 image.",
    ]


def test_match_api_holds_the_gate_while_matching(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(webapp.handlers, "match_view", spy(log, webapp.handlers.match_view))
    webapp.handlers.match_api(engine, thumbs, RecordingGate(log), upload(root / "p04.png"), "", "p04")
    assert log == ["enter", "exit", "enter", "work", "exit"]  # decoding, then matching: each under the gate


def test_show_match_opens_the_view_of_the_clicked_result(served):
    engine, thumbs, root = served
    _, records, _, searched = webapp.handlers.search(engine, thumbs, str(root / "p06.png"), 4)
    for index in (0, 3):
        image_id = records[index]["id"]
        update, line = webapp.handlers.show_match(engine, thumbs, webapp.gate.Gate(1, 1), searched, records, Selected(index))
        expected = match_view(searched["image"], engine.index.preview(image_id))
        assert set(update) == {"__type__", "value", "visible"} and update["visible"] is True
        assert np.array_equal(pixels(update["value"]), pixels(expected.image))
        assert line == (f"**{expected.count} matching points** between the query and #{index + 1} `{image_id}`: "
                        "local features that agree on one geometry (SIFT, RANSAC).")


def test_show_match_without_a_search_or_outside_the_results_hides_the_view(served):
    engine, thumbs, root = served
    _, records, _, searched = webapp.handlers.search(engine, thumbs, str(root / "p06.png"), 4)
    hidden = ({"__type__": "update", "visible": False}, "")
    for state, rows, index in ((None, records, 0), ({}, records, 1), (searched, [], 0), (searched, None, 0),
                               (searched, records, 4), (searched, records, -1), (searched, records, 10)):
        assert webapp.handlers.show_match(engine, thumbs, webapp.gate.Gate(1, 1), state, rows, Selected(index)) == hidden


def test_show_match_refuses_a_result_no_longer_in_the_index(served, caplog):
    engine, thumbs, root = served
    caplog.set_level(logging.INFO, logger=LOGGER)
    searched = {"id": None, "image": picture(root / "p06.png")}
    records = [{"rank": 1, "id": "gone", "score": 0.5}]
    assert refusal(webapp.handlers.show_match, engine, thumbs, webapp.gate.Gate(1, 1), searched, records, Selected(0)) == (
        "Unknown image", "'gone' is not in this index.")
    assert messages(caplog) == ["refused: Unknown image: 'gone' is not in this index."]


def test_show_match_holds_the_gate_while_matching(served, monkeypatch):
    engine, thumbs, root = served
    log = []
    monkeypatch.setattr(webapp.handlers, "match_view", spy(log, webapp.handlers.match_view))
    searched = {"id": None, "image": picture(root / "p06.png")}
    webapp.handlers.show_match(engine, thumbs, RecordingGate(log), searched, [{"id": "p01"}], Selected(0))
    assert log == ["enter", "work", "exit"]


# The upload check --------------------------------------------------------------------------------

def test_check_upload_keeps_a_usable_image_and_clears_the_box(served, monkeypatch):
    _, _, root = served
    shown = Recorder()
    monkeypatch.setattr(webapp.handlers.gr, "Warning", shown)
    keep = ({"__type__": "update"}, "", None)
    assert webapp.handlers.check_upload(upload(root / "p01.png")) == keep
    assert webapp.handlers.check_upload({"background": upload(root / "p01.png"), "layers": []}) == keep
    assert webapp.handlers.check_upload(None) == keep  # a cleared editor
    assert shown.shown == []


def test_check_upload_clears_an_unusable_file_and_says_why(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    shown = Recorder()
    monkeypatch.setattr(webapp.handlers.gr, "Warning", shown)
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    assert webapp.handlers.check_upload(upload(tmp_path / "notes.png")) == (None, "", None)
    assert webapp.handlers.check_upload(upload(tmp_path / "empty.png")) == (None, "", None)
    assert webapp.handlers.check_upload("https://example.com/a.jpg") == (None, "", None)
    unreadable = "This file cannot be used as a query: not a readable image (no image format recognised)."
    assert shown.shown == [
        ("Not a usable image", unreadable),
        ("Not a usable image", "This file cannot be used as a query: the file is empty (0 bytes)."),
        ("Not an image", webapp.queries.URL_MESSAGE),
    ]
    assert str(tmp_path) not in " ".join(m for _, m in shown.shown)  # no server path is shown
    assert messages(caplog)[0] == f"refused upload: Not a usable image: {unreadable}"
    assert len(messages(caplog)) == 3


# The API's file input: no URL is ever fetched --------------------------------------------------

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
        assert (caught.value.title, caught.value.message) == ("Not an image", webapp.queries.URL_MESSAGE)
    assert component.asked == []
    assert messages(caplog) == [f"refused: Not an image: {webapp.queries.URL_MESSAGE}"] * 2


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
    assert (caught.value.title, caught.value.message) == ("Not an image", webapp.queries.URL_MESSAGE) and downloads == []
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
    webapp.http_api.add_http_api(api, engine, thumbnails, webapp.gate.Gate(1, 4))
    data = (root / "p03.png").read_bytes()
    with TestClient(api) as client:
        answer = client.post("/api/search", files={"image": ("p03.png", data, "image/png")})
        assert answer.status_code == 200
        assert len(answer.json()["results"]) == N and answer.json()["results"][0]["id"] == "p03"
        assert len(client.post("/api/search?k=5", files={"image": ("p03.png", data)}).json()["results"]) == 5
        for k in ("²", "١٢"):  # a superscript two, Arabic-Indic twelve
            bad = client.post("/api/search", params={"k": k}, files={"image": ("p03.png", data)})
            assert bad.status_code == 400, bad.text
            assert bad.json() == {"title": "Bad K", "error": f"K must be a whole number from 1 to {N}; got {k!r}."}
