"""Page links in this process, over the tiny index: the link of a page, reading one back, and the uploads kept for them.

tests/test_browser.py opens the same links in Chromium against the live app.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import gradio as gr
import pytest
from PIL import Image

import webapp.context
import webapp.gate
import webapp.handlers
import webapp.kept
import webapp.links
import webapp.messages
from tests.test_app_handlers import N, served, uploads_under_pytest_temp  # noqa: F401  (the same tiny index; uploads)


class Warned:
    """Stands in for gr.Warning: records (title, message) of each warning the user would see."""

    def __init__(self):
        self.shown = []

    def __call__(self, message, *, title=None, **kwargs):
        self.shown.append((title, message))


@pytest.fixture
def warned(monkeypatch):
    shown = Warned()
    monkeypatch.setattr(webapp.links.gr, "Warning", shown)
    return shown


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ctx(served, tmp_path):
    engine, thumbs, _ = served
    return webapp.context.AppContext(engine, thumbs, webapp.gate.Gate(1, 4),
                                     webapp.kept.KeptQueries(tmp_path / "kept"))


def params(link: str) -> dict:
    """The parameters of a "?a=b&.." link, as the page's request sees them."""
    return dict(parse_qsl(urlsplit(link).query))


def ids(records) -> list[str]:
    return [r["id"] for r in records]


# The uploads kept for links --------------------------------------------------------------------------

def test_a_kept_upload_comes_back_by_its_token_byte_for_byte(served, tmp_path):
    _, _, root = served
    kept = webapp.kept.KeptQueries(tmp_path / "kept")
    token = kept.keep(root / "p03.png")
    assert webapp.kept.TOKEN.fullmatch(token) and len(token) == 22
    path = kept.path_of(token)
    assert Path(path).read_bytes() == (root / "p03.png").read_bytes()
    assert Path(path).parent == tmp_path / "kept" and Path(path).name == token + ".png"  # named by its format
    assert kept.keep(root / "p03.png") == token  # the same file, the same token, one file
    other = kept.keep(root / "p04.png")
    assert other != token and sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(
        [token + ".png", other + ".png"])
    # Another app (another key) gives the same file another token: tokens cannot be computed from a photo.
    assert webapp.kept.KeptQueries(tmp_path / "kept2").keep(root / "p03.png") != token


def test_a_token_never_names_another_file(served, tmp_path):
    _, _, root = served
    kept = webapp.kept.KeptQueries(tmp_path / "kept")
    token = kept.keep(root / "p03.png")
    (tmp_path / "kept" / "secret.txt").write_text("not for links")
    for bad in ("../../etc/passwd", "/etc/passwd", "secret.txt", "secret", token + "/..", token[:-1], token + "A",
                token + ".png", "", None, 42, "A" * 21 + "/", "%2e%2e%2f" * 3):
        assert kept.path_of(bad) is None, bad
    assert kept.path_of("A" * 22) is None  # well formed, never kept


def test_kept_uploads_expire_a_day_after_their_link_was_made(served, tmp_path):
    _, _, root = served
    clock = Clock()
    kept = webapp.kept.KeptQueries(tmp_path / "kept", seconds=webapp.kept.KEEP_SECONDS, clock=clock)
    token = kept.keep(root / "p03.png")
    clock.now += webapp.kept.KEEP_SECONDS - 1
    assert kept.path_of(token) is not None
    assert kept.keep(root / "p03.png") == token  # shared again: kept a day from now
    clock.now += webapp.kept.KEEP_SECONDS - 1
    assert kept.path_of(token) is not None
    clock.now += 2
    assert kept.path_of(token) is None
    kept.keep(root / "p04.png")  # each keep sweeps the folder
    assert not (tmp_path / "kept" / (token + ".png")).exists()


def test_kept_uploads_stay_within_their_disk_budget_oldest_first(served, tmp_path):
    _, _, root = served
    size = (root / "p00.png").stat().st_size
    clock = Clock()
    kept = webapp.kept.KeptQueries(tmp_path / "kept", max_bytes=3 * size + size // 2, clock=clock)
    tokens = []
    for i in range(5):
        clock.now += 10
        tokens.append(kept.keep(root / f"p{i:02d}.png"))
    alive = [kept.path_of(t) is not None for t in tokens]
    assert alive == [False, False, True, True, True]
    assert sum(p.stat().st_size for p in (tmp_path / "kept").iterdir()) <= kept.max_bytes
    assert webapp.kept.KEEP_BYTES == 256 * 1024 * 1024 and webapp.kept.KEEP_SECONDS == 24 * 3600


def test_a_left_over_partial_file_is_swept(tmp_path):
    kept = webapp.kept.KeptQueries(tmp_path / "kept", clock=Clock(1_000_000.0))
    part = tmp_path / "kept" / "x.part"
    part.write_bytes(b"half")
    os.utime(part, (1_000_000.0 - 7200, 1_000_000.0 - 7200))
    kept.sweep()
    assert not part.exists()


# The page's link -------------------------------------------------------------------------------------

def test_the_link_of_an_index_image_names_it_with_k_box_and_the_open_result(ctx):
    _, _, _, searched = webapp.handlers.search(ctx, ctx.thumbnails.preview("p03"), 5, "", "p03")
    assert webapp.links.share_link(ctx, searched, None) == "?id=p03&k=5"
    assert webapp.links.share_link(ctx, searched, "p07") == "?id=p03&k=5&match=p07"
    _, _, _, searched = webapp.handlers.search(ctx, ctx.thumbnails.preview("p03"), 3, "0 0 40 30", "p03")
    assert webapp.links.share_link(ctx, searched, None) == "?id=p03&k=3&box=0%2C0%2C40%2C30"
    assert not any((ctx.kept.folder).iterdir())  # an index image is never kept: its id is enough
    assert webapp.links.share_link(ctx, None, "p07") == ""


def test_the_link_of_an_upload_keeps_it_and_brings_the_page_back_whole(ctx, served, warned):
    engine, thumbs, root = served
    _, records, _, searched = webapp.handlers.search(ctx, str(root / "p07.png"), 4, "10,5,70,50")
    link = webapp.links.share_link(ctx, searched, records[1]["id"])
    asked = params(link)
    assert set(asked) == {"q", "k", "box", "match"} and (asked["k"], asked["box"]) == ("4", "10,5,70,50")
    assert Path(ctx.kept.path_of(asked["q"])).read_bytes() == (root / "p07.png").read_bytes()

    # Opening the link: the same query image, box, K, results and result in the panel.
    read = webapp.links.read_link(ctx, asked)
    assert read == {"image": ctx.kept.path_of(asked["q"]), "source": None, "k": 4, "box": "10,5,70,50",
                    "match": records[1]["id"], "problems": []}
    editor, k, box, source, gallery, again, timings, restored = webapp.links.run_link(ctx, read)
    assert Path(editor).read_bytes() == (root / "p07.png").read_bytes()
    assert (k, box, source) == (4, "10,5,70,50", None) and again == records and len(gallery) == 4
    assert restored["image"].size == searched["image"].size == (60, 45)
    opened = webapp.links.open_link_match(ctx, read, again)
    assert opened[0] == gr.update(visible=True) and opened[-1] == records[1]["id"]
    assert warned.shown == []
    # Shared again from the page it opened: the same link.
    assert webapp.links.share_link(ctx, restored, records[1]["id"]) == link


def test_an_upload_no_longer_on_the_server_gets_no_link(ctx, served, tmp_path):
    _, _, root = served
    (tmp_path / "gone.png").write_bytes((root / "p01.png").read_bytes())
    _, _, _, searched = webapp.handlers.search(ctx, str(tmp_path / "gone.png"), 3)
    (tmp_path / "gone.png").unlink()
    with pytest.raises(gr.Error) as caught:
        webapp.links.share_link(ctx, searched, None)
    assert caught.value.message == "This query image is no longer on the server: upload it again to share the page."
    no_keeping = webapp.context.AppContext(ctx.engine, ctx.thumbnails, ctx.gate)
    with pytest.raises(gr.Error):
        webapp.links.share_link(no_keeping, {**searched, "file": str(served[2] / "p01.png")}, None)


# Reading a link: what is wrong is left out with one warning, what is right is kept ---------------------

def test_a_good_link_is_taken_as_it_is(ctx):
    preview = ctx.thumbnails.preview("p04")
    assert webapp.links.read_link(ctx, {"id": "p04", "k": "7", "box": "1,2,30,40", "match": "p05"}) == {
        "image": preview, "source": "p04", "k": 7, "box": "1,2,30,40", "match": "p05", "problems": []}
    assert webapp.links.read_link(ctx, {"id": "p04"}) == {
        "image": preview, "source": "p04", "k": N, "box": "", "match": None, "problems": []}
    assert webapp.links.read_link(ctx, {}) is None and webapp.links.read_link(ctx, {"id": "", "other": "x"}) is None
    for k in ("1", "6", "12"):
        assert webapp.links.read_link(ctx, {"id": "p01", "k": k})["k"] == int(k)


@pytest.mark.parametrize("k", ["abc", "0", "13", "2.5", "-1", "²"])
def test_a_bad_k_is_replaced_and_said(ctx, k):
    link = webapp.links.read_link(ctx, {"id": "p04", "k": k, "box": "1,2,30,40"})
    assert (link["source"], link["k"], link["box"]) == ("p04", N, "1,2,30,40")
    assert link["problems"] == [f"K {k!r} is not a whole number from 1 to {N}, so K is {N}"]


def test_what_is_wrong_is_left_out_and_what_is_right_kept(ctx):
    link = webapp.links.read_link(ctx, {"id": "../../etc/passwd", "k": "3", "box": "1,2,30,40", "match": "x" * 100})
    assert (link["image"], link["source"], link["k"], link["box"], link["match"]) == (None, None, 3, "1,2,30,40", None)
    assert link["problems"] == ["the image '../../etc/passwd' is not in this index",
                                f"the result to explain, {'x' * 80!r}, is not in this index"]
    link = webapp.links.read_link(ctx, {"q": "../../etc/passwd", "k": "3"})
    assert link["image"] is None and link["k"] == 3
    assert link["problems"] == ["its uploaded query image is no longer kept (an upload is kept a day after its link "
                                "was made)"]
    link = webapp.links.read_link(ctx, {"id": "p01", "box": "9" * 100})
    assert link["box"] == "" and link["problems"] == [
        f"the box {'9' * 80!r} is not four whole numbers x0,y0,x1,y1, so it was left out"]


def test_a_box_outside_the_image_is_left_out_with_one_warning_and_the_rest_runs(ctx, warned):
    link = webapp.links.read_link(ctx, {"id": "p06", "k": "5", "box": "900,900,1000,1000"})
    editor, k, box, source, gallery, records, timings, searched = webapp.links.run_link(ctx, link)
    assert (k, box, source) == (5, "", "p06") and Path(editor).read_bytes() == ctx.index.preview("p06")
    assert ids(records) == ctx.engine.search_id("p06", 5).ids and len(gallery) == 5  # the whole image, by its id
    assert searched["box"] == "" and timings["embed_ms"] == 0.0
    assert warned.shown == [("Link partly used", "Not all of this link could be used: the box 900,900,1000,1000 "
                                                 "holds no pixel of the 80 × 60 image, so it was left out.")]


def test_several_faults_in_a_link_make_one_warning(ctx, warned):
    link = webapp.links.read_link(ctx, {"id": "p06", "k": "0", "box": "900,900,1000,1000", "match": "nope"})
    out = webapp.links.run_link(ctx, link)
    assert out[1:4] == (N, "", "p06") and len(out[5]) == N
    assert len(warned.shown) == 1
    assert warned.shown[0][1] == (f"Not all of this link could be used: K '0' is not a whole number from 1 to {N}, "
                                  f"so K is {N}; the result to explain, 'nope', is not in this index; the box "
                                  "900,900,1000,1000 holds no pixel of the 80 × 60 image, so it was left out.")


def test_a_link_to_an_unknown_image_keeps_its_k_and_box_and_runs_nothing(ctx, warned):
    link = webapp.links.read_link(ctx, {"id": "nope", "k": "3", "box": "1,2,3,4"})
    editor, k, box, source, *found = webapp.links.run_link(ctx, link)
    assert editor == gr.update() and (k, box, source) == (3, "1,2,3,4", None) and found == [None] * 4
    assert warned.shown == [("Link partly used",
                             "Not all of this link could be used: the image 'nope' is not in this index.")]
    assert webapp.links.open_link_match(ctx, {**link, "match": "p01"}, None)[0] == gr.update(visible=False)


def test_a_link_with_an_id_runs_the_stored_descriptor_and_a_box_embeds_the_crop(ctx, served, warned):
    engine, thumbs, _ = served
    out = webapp.links.run_link(ctx, webapp.links.read_link(ctx, {"id": "p06", "k": "4"}))
    assert ids(out[5]) == engine.search_id("p06", 4).ids and out[7]["id"] == "p06"
    out = webapp.links.run_link(ctx, webapp.links.read_link(ctx, {"id": "p06", "k": "3", "box": "0,0,40,30"}))
    crop = Image.open(thumbs.preview("p06")).convert("RGB").crop((0, 0, 40, 30))
    assert ids(out[5]) == engine.search(crop, 3).ids and out[6]["embed_ms"] > 0
    assert webapp.links.share_link(ctx, out[7], None) == "?id=p06&k=3&box=0%2C0%2C40%2C30"
    assert warned.shown == []


def test_a_link_to_a_query_without_a_confident_match_says_so_above_its_results(ctx, served, monkeypatch, warned):
    from retrieval.confidence import judge
    from retrieval.engine import SearchResult

    engine, _, _ = served
    weak = SearchResult(["p03"], [0.5], [0.41], 1.0, 1.0, judge(0.41, 0.68))
    monkeypatch.setattr(engine, "search_id", lambda image_id, k: weak)
    *_, timings, searched = webapp.links.run_link(ctx, webapp.links.read_link(ctx, {"id": "p06", "k": "1"}))
    assert searched["confidence"]["confident"] is False
    assert webapp.handlers.describe(timings, searched)[0].startswith(f"**{webapp.messages.NO_CONFIDENT_MATCH}**")
