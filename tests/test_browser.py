"""The app in a real browser: Debian's Chromium driven by Playwright, against app.py on 127.0.0.1.

Never runs `playwright install`: the browser is /usr/bin/chromium (`apt-get install chromium`).
Without it the tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
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
    # The deep-link button copies its link to the clipboard.
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
    # The file input exists before the editor is ready to take a file: wait for its canvas.
    page.locator("#query canvas").first.wait_for()
    page.locator("#query input[type=file]").set_input_files(str(path))
    # The editor enables Undo once the image is on its canvas; the crop tool needs it there.
    page.wait_for_function(
        "() => { const b = document.querySelector('#query button[aria-label=Undo]'); return b && !b.disabled; }"
    )


def image_rect_in_crop_mode(page) -> tuple[float, float, float, float]:
    """Returns the page rectangle (x0, y0, x1, y1) of the image under the crop tool's grey overlay."""
    canvas = page.locator("#query canvas").first
    origin = canvas.bounding_box()
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=np.int16)
    grey = pixels[pixels.shape[0] // 2, 2]
    differs = np.abs(pixels - grey).max(axis=2) > 40
    # The label and the confirm button differ too, but over far less than half a row or column.
    rows = np.flatnonzero(differs.sum(axis=1) > differs.sum(axis=1).max() / 2)
    cols = np.flatnonzero(differs.sum(axis=0) > differs.sum(axis=0).max() / 2)
    return (origin["x"] + float(cols[0]), origin["y"] + float(rows[0]),
            origin["x"] + float(cols[-1]), origin["y"] + float(rows[-1]))


def is_handle_at(page, x: float, y: float) -> bool:
    """Tells whether a black corner handle of the crop frame lies around page point (x, y)."""
    shot = page.screenshot(clip={"x": x - 12, "y": y - 12, "width": 24, "height": 24})
    # A handle is an L of bars 6 px thick: well over 60 near-black pixels in this window.
    return int((np.asarray(Image.open(io.BytesIO(shot)).convert("L")) < 40).sum()) > 60


def crop_with_editor(page, keep: float) -> None:
    """Crops the editor's image to about its bottom-right `keep` fraction with the crop tool."""
    editor = page.locator("#query")
    editor.get_by_role("button", name="Image", exact=True).click()
    editor.get_by_role("button", name="Crop", exact=True).click()
    confirm = editor.get_by_role("button", name="Confirm crop")
    confirm.wait_for()
    x0, y0, x1, y1 = image_rect_in_crop_mode(page)
    to_x, to_y = x1 - (x1 - x0) * keep, y1 - (y1 - y0) * keep
    assert not is_handle_at(page, to_x, to_y)
    for _ in range(5):
        # The handles take a moment to answer after the tool opens: drag until the frame follows.
        page.mouse.move(x0 + 2, y0 + 2)  # the top-left handle
        page.mouse.down()
        page.mouse.move(to_x, to_y, steps=10)
        page.mouse.up()
        if is_handle_at(page, to_x, to_y):
            break
        page.wait_for_timeout(300)
    else:
        pytest.fail("the crop frame did not follow the drag")
    confirm.click()
    confirm.wait_for(state="detached")


def set_k(page, k: int) -> None:
    number = page.locator("#k input[type=number]")
    number.fill(str(k))
    number.press("Enter")


def test_upload_crop_search_shows_k_results_and_query_time(page, app_url, rparis_dir, artifacts_dir):
    photo = rparis_dir / "jpg" / "paris_louvre_000050.jpg"
    width, height = Image.open(photo).size
    page.goto(app_url)
    upload(page, photo)
    crop_with_editor(page, keep=0.6)
    set_k(page, 7)
    page.locator("#search").click()
    wait_for_results(page, 7)

    timing = page.locator("#timing").inner_text()
    assert re.search(r"Query time [\d.]+ ms: embedding [\d.]+ ms \+ search [\d.]+ ms", timing), timing
    captions = page.locator("#results .caption-label").all_inner_texts()
    assert [c.split("\n")[0].split(" · ")[0] for c in captions] == [f"#{r}" for r in range(1, 8)]
    crop_w, crop_h = searched_size(page)
    assert 0.4 * width < crop_w < 0.8 * width and 0.4 * height < crop_h < 0.8 * height
    # An uploaded image has no link of its own (only the page's deep link).
    assert page.locator("#share textarea, #share input").first.input_value() == ""
    page.mouse.move(0, 0)  # no brush cursor over the editor in the picture
    page.screenshot(path=str(artifacts_dir / "app-results.png"), full_page=True)

    # Gradio's deep link brings the page back as it is: the cropped query, K and the results.
    page.get_by_role("button", name="Link to this page").click()
    page.wait_for_function("() => navigator.clipboard.readText().then(t => t.includes('deep_link='))")
    link = page.evaluate("() => navigator.clipboard.readText()")
    restored = page.context.new_page()
    restored.goto(link)
    wait_for_results(restored, 7)
    assert restored.locator("#results .caption-label").all_inner_texts() == captions
    assert restored.locator("#k input[type=number]").input_value() == "7"
    assert searched_size(restored) == (crop_w, crop_h)


def test_share_link_opens_and_runs_its_query(page, app_url):
    page.goto(app_url + "?id=paris_eiffel_000266&k=5&box=20,10,150,130")
    wait_for_results(page, 5)

    assert page.locator("#box input, #box textarea").first.input_value() == "20,10,150,130"
    assert page.locator("#k input[type=number]").input_value() == "5"
    assert searched_size(page) == (130, 120)
    assert "embedding" in page.locator("#timing").inner_text()
    page.wait_for_function("() => document.querySelector('#share textarea, #share input').value.startsWith('http')")
    link = urlsplit(page.locator("#share textarea, #share input").first.input_value())
    assert f"{link.scheme}://{link.netloc}{link.path}" == app_url
    assert parse_qs(link.query) == {"id": ["paris_eiffel_000266"], "k": ["5"], "box": ["20,10,150,130"]}


def test_example_click_searches_that_index_image_first(page, app_url):
    page.goto(app_url)
    page.locator("#examples .thumbnail-item").nth(2).click()
    wait_for_results(page, 20)

    first = page.locator("#results .caption-label").first.inner_text()
    assert "stored descriptor" in page.locator("#timing").inner_text()
    page.wait_for_function("() => document.querySelector('#share textarea, #share input').value.includes('?id=')")
    image_id = parse_qs(urlsplit(page.locator("#share textarea, #share input").first.input_value()).query)["id"][0]
    assert first.split("\n")[1] == image_id  # its own stored descriptor finds itself first

    # Searching again is the same query: the editor still holds that index image, unedited.
    set_k(page, 19)
    page.locator("#search").click()
    wait_for_results(page, 19)
    assert page.locator("#results .caption-label").first.inner_text() == first
    page.wait_for_function("() => document.querySelector('#share textarea, #share input').value.includes('k=19')")


def test_a_link_to_an_unknown_id_warns_and_runs_nothing(page, app_url):
    page.goto(app_url + "?id=..%2F..%2Fetc%2Fpasswd&k=5")
    page.get_by_text("not in this index").wait_for()
    assert result_count(page) == 0
