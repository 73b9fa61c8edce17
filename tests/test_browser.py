"""The app in a real browser: Debian's Chromium driven by Playwright, against app.py on 127.0.0.1.

Never runs `playwright install`: the browser is /usr/bin/chromium (`apt-get install chromium`).
Without it the tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from tests.conftest import require

pytest_plugins = ["tests.appserver.fixtures"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium; listed before app_url so a missing browser skips before the app starts."""
    require(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # "Link to this page" copies its link to the clipboard.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url.rstrip("/"))
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def result_count(page) -> int:
    return page.locator("#results .thumbnail-item").count()


def wait_for_results(page, k: int) -> None:
    page.wait_for_function(
        "k => document.querySelectorAll('#results .thumbnail-item').length === k"
        " && /Query time/.test(document.querySelector('#timing').innerText)",
        arg=k,
    )


def searched_size(page) -> tuple[int, int]:
    """Returns the size the page reports for the query as searched."""
    caption = page.locator("#searched figcaption")
    caption.wait_for()
    width, height = re.fullmatch(r"Query as searched: (\d+) × (\d+) px", caption.inner_text()).groups()
    return int(width), int(height)


def upload(page, path: Path) -> None:
    page.locator("#query input[type=file]").wait_for(state="attached")
    page.locator("#query input[type=file]").set_input_files(str(path))
    wait_for_query_image(page)


def wait_for_query_image(page) -> None:
    page.wait_for_function("() => { const i = document.querySelector('#query img'); return i && i.naturalWidth > 0; }")


def image_rect(page) -> dict:
    """Returns the query image's own rectangle on the page (inside object-fit's bands) and its natural size."""
    return page.evaluate("""() => {
        const img = document.querySelector('#query img'), r = img.getBoundingClientRect();
        const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
        const w = img.naturalWidth * s, h = img.naturalHeight * s;
        return {x: r.left + (r.width - w) / 2, y: r.top + (r.height - h) / 2, w, h, s,
                width: img.naturalWidth, height: img.naturalHeight, src: img.src};
    }""")


def box_field(page):
    return page.locator("#box input, #box textarea").first


def drag_box(page, start: tuple[float, float], end: tuple[float, float]) -> tuple[int, int, int, int]:
    """Drags on the query image between two fractions of its size; returns the box that region is in its pixels."""
    r = image_rect(page)
    (fx0, fy0), (fx1, fy1) = start, end
    page.mouse.move(r["x"] + fx0 * r["w"], r["y"] + fy0 * r["h"])
    page.mouse.down()
    page.mouse.move(r["x"] + fx1 * r["w"], r["y"] + fy1 * r["h"], steps=12)
    page.mouse.up()
    return (round(fx0 * r["width"]), round(fy0 * r["height"]), round(fx1 * r["width"]), round(fy1 * r["height"]))


def frame_rect(page) -> dict:
    frame = page.locator("#box-frame")
    frame.wait_for(state="visible")
    return frame.bounding_box()


def set_k(page, k: int) -> None:
    number = page.locator("#k input[type=number]")
    number.fill(str(k))
    number.press("Enter")


def test_dragging_draws_a_box_and_search_searches_inside_it(page, app_url, rparis_dir, artifacts_dir):
    photo = rparis_dir / "jpg" / "paris_louvre_000050.jpg"
    page.goto(app_url)
    upload(page, photo)
    before = image_rect(page)
    assert (before["width"], before["height"]) == Image.open(photo).size
    # The upload's check clears the box when it answers; under load it can answer after the drag,
    # as it would for a person dragging at once, so drag again until the box stays.
    for _ in range(5):
        expected = drag_box(page, (0.2, 0.25), (0.7, 0.85))
        page.wait_for_timeout(700)
        if box_field(page).input_value():
            break
    x0, y0, x1, y1 = (int(v) for v in box_field(page).input_value().split(","))
    tolerance = 2 / before["s"]  # two screen pixels, in image pixels
    assert all(abs(got - want) <= tolerance for got, want in zip((x0, y0, x1, y1), expected)), (x0, y0, x1, y1)
    # A rectangle is shown where the drag went; the image itself is untouched (no stroke, no new file).
    frame = frame_rect(page)
    assert frame["x"] == pytest.approx(before["x"] + 0.2 * before["w"], abs=3)
    assert frame["width"] == pytest.approx(0.5 * before["w"], abs=3)
    assert frame["height"] == pytest.approx(0.6 * before["h"], abs=3)
    assert image_rect(page)["src"] == before["src"] and page.locator("#query canvas").count() == 0

    set_k(page, 7)
    page.locator("#search").click()
    wait_for_results(page, 7)
    timing = page.locator("#timing").inner_text()
    assert re.search(r"Query time [\d.]+ ms: embedding [\d.]+ ms \((onnxruntime|openvino|keras)\) \+ search [\d.]+ ms", timing), timing
    captions = page.locator("#results .caption-label").all_inner_texts()
    assert [c.split("\n")[0].split(" · ")[0] for c in captions] == [f"#{r}" for r in range(1, 8)]
    assert searched_size(page) == (x1 - x0, y1 - y0)  # the search ran on exactly that region
    assert not page.locator("#share").is_visible()  # a link is made when asked for
    page.mouse.move(0, 0)
    page.screenshot(path=str(artifacts_dir / "app-results.png"), full_page=True)

    # Clicking a result shows why it matched.
    page.locator("#results .thumbnail-item").nth(1).click()
    page.locator("#match img").wait_for()
    second = captions[1].split("\n")[1]
    assert re.fullmatch(rf"\d+ matching points? between the query and #2 {second}: .+",
                        page.locator("#match-count").inner_text())
    page.screenshot(path=str(artifacts_dir / "app-match.png"), full_page=True)

    # The page's link brings it back whole: the query image, its box, K, the results and the match view.
    link = share(page)
    assert parse_qs(urlsplit(link).query).keys() == {"q", "k", "box", "match"}
    restored = page.context.new_page()
    restored.goto(link)
    wait_for_results(restored, 7)
    assert restored.locator("#results .caption-label").all_inner_texts() == captions
    assert restored.locator("#k input[type=number]").input_value() == "7"
    assert box_field(restored).input_value() == f"{x0},{y0},{x1},{y1}"
    assert searched_size(restored) == (x1 - x0, y1 - y0)
    wait_for_query_image(restored)
    assert (image_rect(restored)["width"], image_rect(restored)["height"]) == Image.open(photo).size  # the upload
    restored.locator("#match img").wait_for()
    assert restored.locator("#match-title").inner_text().startswith(f"#2 {second} · similarity")
    wait_in_view(restored, "#match-panel")
    assert in_view(restored, "#match-panel")
    restored.screenshot(path=str(artifacts_dir / "app-link-restored.png"))
    restored.locator("#search").click()  # the restored query image is there to search again
    try:  # a new search closes the match panel
        restored.wait_for_function("() => !document.querySelector('#match-panel') || "
                                   "document.querySelector('#match-panel').offsetParent === null")
    except Exception:  # noqa: BLE001  (say what the page showed instead)
        restored.screenshot(path=str(artifacts_dir / "app-link-search-again.png"), full_page=True)
        raise AssertionError("the restored page did not search again: "
                             + " | ".join(restored.locator(".toast-body").all_inner_texts())) from None
    wait_for_results(restored, 7)
    assert restored.locator("#results .caption-label").all_inner_texts() == captions


def test_a_typed_box_is_drawn_and_a_click_clears_it(page, app_url, rparis_dir):
    page.goto(app_url)
    upload(page, rparis_dir / "jpg" / "paris_eiffel_000266.jpg")
    r = image_rect(page)
    typed = f"0,0,{r['width'] // 2},{r['height'] // 2}"
    for _ in range(5):  # the upload's check clears the box when it answers, which under load can be late
        box_field(page).fill(typed)
        page.wait_for_timeout(700)
        if box_field(page).input_value() == typed:
            break
    frame = frame_rect(page)
    assert frame["x"] == pytest.approx(r["x"], abs=3) and frame["y"] == pytest.approx(r["y"], abs=3)
    assert frame["width"] == pytest.approx(r["w"] / 2, abs=3) and frame["height"] == pytest.approx(r["h"] / 2, abs=3)
    page.mouse.click(r["x"] + r["w"] * 0.8, r["y"] + r["h"] * 0.8)
    page.wait_for_function("() => document.querySelector('#box input, #box textarea').value === ''")
    page.locator("#box-frame").wait_for(state="hidden")


def test_an_unusable_upload_says_so_at_once_and_clears_the_editor(page, app_url, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    page.goto(app_url)
    page.locator("#query input[type=file]").wait_for(state="attached")
    page.locator("#query input[type=file]").set_input_files(str(notes))
    page.get_by_text("cannot be used as a query: not a readable image").wait_for()
    page.wait_for_function("() => !document.querySelector('#query img')")
    assert "/tmp" not in page.locator("body").inner_text()


def test_share_link_opens_and_runs_its_query(page, app_url):
    page.goto(app_url + "?id=paris_eiffel_000266&k=5&box=20,10,150,130")
    wait_for_results(page, 5)

    assert box_field(page).input_value() == "20,10,150,130"
    assert page.locator("#k input[type=number]").input_value() == "5"
    assert searched_size(page) == (130, 120)
    # The editor shows the sharp 512-px preview, with the link's box drawn on it.
    wait_for_query_image(page)
    r = image_rect(page)
    assert max(r["width"], r["height"]) == 512
    assert frame_rect(page)["width"] == pytest.approx(130 * r["s"], abs=3)
    assert "embedding" in page.locator("#timing").inner_text()
    link = urlsplit(share(page))
    assert f"{link.scheme}://{link.netloc}{link.path}" == app_url
    assert parse_qs(link.query) == {"id": ["paris_eiffel_000266"], "k": ["5"], "box": ["20,10,150,130"]}


def test_example_click_searches_that_index_image_first(page, app_url):
    page.goto(app_url)
    page.locator("#examples .thumbnail-item").nth(2).click()
    wait_for_results(page, 20)

    first = page.locator("#results .caption-label").first.inner_text()
    assert "stored descriptor" in page.locator("#timing").inner_text()
    wait_for_query_image(page)
    assert max(image_rect(page)["width"], image_rect(page)["height"]) == 512  # the preview, not the thumbnail
    image_id = parse_qs(urlsplit(share(page)).query)["id"][0]
    assert first.split("\n")[1] == image_id  # its own stored descriptor finds itself first

    # Searching again is the same query: the editor still holds that index image, unedited.
    set_k(page, 19)
    page.locator("#search").click()
    wait_for_results(page, 19)
    assert page.locator("#results .caption-label").first.inner_text() == first
    assert "k=19" in share(page)


def test_a_link_to_an_unknown_id_warns_and_runs_nothing(page, app_url):
    page.goto(app_url + "?id=..%2F..%2Fetc%2Fpasswd&k=5")
    page.get_by_text("not in this index").wait_for()
    assert result_count(page) == 0
def test_a_result_click_shows_it_in_view_at_its_largest_stored_size(page, app_url, lite0_index, artifacts_dir):
    page.goto(app_url)
    page.locator("#examples .thumbnail-item").nth(1).click()
    wait_for_results(page, 20)
    last = page.locator("#results .thumbnail-item").nth(18)
    last.scroll_into_view_if_needed()
    last.click()
    # At once: the panel, in the window, with the result's stored preview; the match view follows.
    page.locator("#result-image img").wait_for()
    # The scroll runs on the frame after the panel is drawn: wait for it (5 s at most), then check.
    wait_in_view(page, "#match-panel")
    assert in_view(page, "#match-panel")
    caption = page.locator("#results .caption-label").nth(18).inner_text()
    image_id = caption.split("\n")[1]
    size = page.evaluate("() => { const i = document.querySelector('#result-image img');"
                         " return i.complete ? [i.naturalWidth, i.naturalHeight] : null; }")
    if size is None:
        page.wait_for_function("() => document.querySelector('#result-image img').naturalWidth > 0")
        size = page.evaluate("() => { const i = document.querySelector('#result-image img');"
                             " return [i.naturalWidth, i.naturalHeight]; }")
    from retrieval.index import load_index

    stored = Image.open(io.BytesIO(load_index(lite0_index).preview(image_id)))
    assert tuple(size) == stored.size and max(size) == 512  # the largest size the index stores
    assert page.locator("#match-title").inner_text().startswith(f"#19 {image_id} · similarity")
    page.locator("#match img").wait_for()
    assert re.match(rf"\d+ matching points? between the query and #19 {image_id}: ",
                    page.locator("#match-count").inner_text())
    page.screenshot(path=str(artifacts_dir / "app-result-in-view.png"))


def test_a_link_with_a_box_outside_the_image_keeps_its_id_and_k(page, app_url):
    page.goto(app_url + "?id=paris_pantheon_000753&k=5&box=900,900,1000,1000")
    wait_for_results(page, 5)
    assert page.locator("#results .caption-label").first.inner_text().split("\n")[1] == "paris_pantheon_000753"
    assert page.locator("#k input[type=number]").input_value() == "5"
    assert box_field(page).input_value() == ""
    wait_for_query_image(page)
    page.get_by_text("holds no pixel of the 512 × 384 image, so it was left out").wait_for()
    # One warning, and nothing in error: the page stays usable.
    assert page.locator(".toast-body").count() == 1 and page.locator(".toast-body.warning").count() == 1
    assert page.get_by_text("Error", exact=True).count() == 0
    page.locator("#search").click()
    page.wait_for_function("() => /stored descriptor/.test(document.querySelector('#timing').innerText)")


def test_an_old_error_closes_on_fresh_results_and_a_new_k_searches_again(page, app_url):
    page.goto(app_url)
    page.locator("#search").click()
    page.locator(".toast-body.error").wait_for()
    assert "No image to search" in page.locator(".toast-body.error").inner_text()
    page.locator("#examples .thumbnail-item").nth(3).click()
    wait_for_results(page, 20)
    page.wait_for_function("() => !document.querySelector('.toast-body.error')")
    set_k(page, 6)  # no Search click: a new K is a new search
    wait_for_results(page, 6)


def share(page) -> str:
    """Clicks "Link to this page"; returns the link it shows (and copies)."""
    page.get_by_role("button", name="Link to this page").click()
    page.wait_for_function("() => (document.querySelector('#share textarea, #share input') || {}).value"
                           "?.startsWith('http')")
    link = page.locator("#share textarea, #share input").first.input_value()
    assert page.evaluate("() => navigator.clipboard.readText()") == link
    return link


def wait_in_view(page, selector: str, timeout: float = 5000) -> None:
    """Waits until the top of the element is inside the window; a timeout leaves the assertion to fail."""
    try:
        page.wait_for_function("s => { const r = document.querySelector(s).getBoundingClientRect();"
                               " return r.top >= 0 && r.top < window.innerHeight - 100; }",
                               arg=selector, timeout=timeout)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError; the caller's assertion says what failed
        pass


def in_view(page, selector: str) -> bool:
    """Tells whether the top of the element is inside the window (not above it, not below it)."""
    return page.evaluate("s => { const r = document.querySelector(s).getBoundingClientRect();"
                         " return r.top >= 0 && r.top < window.innerHeight - 100; }", selector)
