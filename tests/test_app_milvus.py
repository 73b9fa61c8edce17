"""app.py --milvus: the Paris index served from a Milvus Lite server, without its feature matrix.

The index folder the app gets has no feature_list.npy, ANN structure or graph: only what it shows
(ids, thumbnails, previews) and index.json. Milvus Lite runs as its own server process
(`tests.milvusserver.LiteServer`), so that a test can stop it under the running app and start it
again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.appserver.process import ROOT, app_env, free_port, running_app
from tests.milvusserver import LiteServer

from gradio_client import Client, handle_file

TOKEN = "tok-must-not-leak-7731"
CROPS = ("paris_triomphe_000414", "paris_louvre_000081", "paris_eiffel_000266")


@pytest.fixture(scope="module")
def rparis(rparis_dir):
    from retrieval.datasets import load_dataset

    return load_dataset("rparis6k", rparis_dir.parent)


@pytest.fixture(scope="module")
def published(lite0_index, tmp_path_factory):
    """(index folder without its rows, Milvus Lite server) of the Paris index published to collection "paris"."""
    from retrieval.index import update_meta
    from retrieval.milvus import close, connect, publish_rows
    from retrieval.index import load_index

    root = tmp_path_factory.mktemp("milvus-app")
    server = LiteServer(root / "lite.db", root / "lite.log")
    server.start()
    try:
        full = load_index(lite0_index)
        client = connect(server.uri, token=TOKEN)
        report = publish_rows(client, "paris", full.features, full.ids, full.meta)
        close(client, server.uri)
        folder = root / "index"
        shutil.copytree(lite0_index, folder, ignore=shutil.ignore_patterns("feature_list.npy", "ann.faiss", "graph_*"))
        update_meta(folder, milvus=report.record)
        yield folder, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def app(published, tmp_path_factory):
    folder, server = published
    log = tmp_path_factory.mktemp("milvus-app-log") / "app.log"
    with running_app(["--index", str(folder), "--milvus", server.uri], log, env={"MILVUS_TOKEN": TOKEN}) as url:
        yield url, log


@pytest.fixture(scope="module")
def local(lite0_index, lite0):
    """The engine over the local index, with its rows and stored graph: what the app must answer."""
    from retrieval.engine import SearchEngine
    from retrieval.index import load_index

    return SearchEngine(load_index(lite0_index), lite0)


def post(url: str, crop, k: int = 10) -> httpx.Response:
    with open(crop, "rb") as f:
        return httpx.post(url + f"api/search?k={k}", files={"image": ("crop.jpg", f, "image/jpeg")}, timeout=120)


def test_the_app_answers_from_milvus_as_from_the_local_index(app, rparis, local):
    url, _ = app
    for query in CROPS:
        crop = rparis.crops_dir / f"{query}.jpg"
        response = post(url, crop)
        assert response.status_code == 200, response.text
        body, expected = response.json(), local.search(str(crop), 10)
        assert [r["id"] for r in body["results"]] == expected.ids
        # The similarities of the rows read back from Milvus are those of the index's own rows.
        assert [r["similarity"] for r in body["results"]] == pytest.approx(expected.similarities, abs=2e-6)
        assert body["confidence"]["confident"] is expected.confident


def test_thumbnails_come_from_the_index_folder(app, published, rparis):
    from retrieval.index import load_index

    url, _ = app
    index = load_index(published[0], features=False)
    client = Client(url, verbose=False, download_files=False)
    records, _, _ = client.predict(image=handle_file(str(rparis.crops_dir / f"{CROPS[0]}.jpg")), k=3,
                                   api_name="/search")
    assert len(records) == 3
    for record in records:
        got = httpx.get(record["thumbnail"], timeout=60)
        assert got.status_code == 200 and got.content == index.thumbnail(record["id"])
        preview = httpx.get(record["preview"], timeout=60)
        assert preview.status_code == 200 and preview.content == index.preview(record["id"])


def test_a_lost_milvus_fails_each_query_clearly_and_the_app_recovers(app, published, rparis):
    url, log = app
    _, server = published
    crop = rparis.crops_dir / f"{CROPS[0]}.jpg"
    before = post(url, crop).json()["results"]
    server.stop()
    try:
        for _ in range(2):
            response = post(url, crop)
            assert response.status_code == 503
            assert response.json() == {"error": "The search service is not answering; try again in a moment.",
                                        "title": "Search unavailable"}
        assert httpx.get(url + "gradio_api/info", timeout=30).status_code == 200  # the app lives on
    finally:
        server.start()
    # Back: the client reconnects on its own (gRPC retries a lost channel after a short back-off), and
    # every answer until then is the same refusal.
    deadline = time.monotonic() + 60
    while (response := post(url, crop)).status_code == 503 and time.monotonic() < deadline:
        assert response.json()["title"] == "Search unavailable"
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    assert response.json()["results"] == before
    text = log.read_text()
    assert f"search service (Milvus at {server.uri}) is not answering" in text
    assert TOKEN not in text


def run_app(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**app_env(tmp_path), "MILVUS_TOKEN": TOKEN}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args, "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_an_unreachable_milvus_is_one_line_naming_the_uri_without_the_token(published, tmp_path):
    folder, _ = published
    port = free_port()
    done = run_app(["--index", str(folder), "--milvus", f"http://admin:pw-9@127.0.0.1:{port}"], tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Cannot serve this index: cannot reach Milvus at "
                                                   f"http://127.0.0.1:{port}:"), done.stderr
    assert TOKEN not in done.stderr + done.stdout and "pw-9" not in done.stderr + done.stdout


def test_a_collection_that_does_not_match_the_index_is_refused_at_start(published, tmp_path):
    import numpy as np

    from retrieval.milvus import close, connect, publish_rows
    from retrieval.index import read_meta

    folder, server = published
    meta = read_meta(folder)
    client = connect(server.uri)
    rows = np.eye(4, 1280, dtype=np.float32)  # 4 rows where the index has 409
    publish_rows(client, "four", rows, ["a", "b", "c", "d"], meta, replace=True)
    close(client, server.uri)
    done = run_app(["--index", str(folder), "--milvus", server.uri, "--collection", "four"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Cannot serve this index from {server.uri}: collection 'four' holds 4 rows, the index 409"], done.stderr
    done = run_app(["--index", str(folder), "--milvus", server.uri, "--collection", "none"], tmp_path)
    assert done.returncode == 1 and "there is no collection 'none'" in done.stderr
