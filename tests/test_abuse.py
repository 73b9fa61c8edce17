"""What a stranger can send, and what the server and the build do with it: the guards of a public Space.

Every endpoint and handler that takes an image, every limit on a request, and every way a build
can fail on the machine gets its test here (issue: "A public Space that no one can read files
from or knock over"). Requests are raw HTTP, as a hostile client sends them, not the polite client.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import webapp.context
import webapp.gate
import webapp.guard
import webapp.handlers
import webapp.http_api
import webapp.queries
import webapp.thumbnails
from tests.appserver.process import ROOT, app_env, running_app

pytest_plugins = ["tests.appserver.fixtures"]

INDEXED = "paris_defense_000000"


# The file-read hole ---------------------------------------------------------------------------------

def config(url: str) -> dict:
    return httpx.get(url + "config", timeout=30).json()


def image_handlers(url: str) -> dict[str, tuple[int, list]]:
    """Returns {name: (fn_index, data with the image first)} for every handler that takes an image."""
    cfg = config(url)
    query = next(c["id"] for c in cfg["components"] if c.get("props", {}).get("elem_id") == "query")
    handlers = {}
    for i, dep in enumerate(cfg["dependencies"]):
        fn = dep.get("id", i)
        if dep.get("api_name") == "search":
            handlers["/search"] = (fn, [None, 3, ""])
        elif dep.get("api_name") == "match":
            handlers["/match"] = (fn, [None, "", INDEXED])
        elif dep["inputs"][:1] == [query] and len(dep["inputs"]) == 4:
            handlers.setdefault("search button", (fn, [None, 3, "", None]))
        elif dep["inputs"][:1] == [query] and len(dep["inputs"]) == 5:
            handlers["new K"] = (fn, [None, 3, "", None, None])
        elif dep["inputs"] == [query]:
            handlers["upload check"] = (fn, [None])
    assert set(handlers) == {"/search", "/match", "search button", "new K", "upload check"}, handlers
    return handlers


def call(url: str, fn_index: int, data: list) -> dict:
    """Sends one raw queue/join request and returns the process_completed message."""
    session = uuid.uuid4().hex[:11]
    with httpx.Client(timeout=60) as http:
        http.post(url + "gradio_api/queue/join", json={
            "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None,
        }).raise_for_status()
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("no process_completed message")


def file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A private photo on the server, outside Gradio's upload folder, with a pattern no index image has."""
    folder = tmp_path_factory.mktemp("private")
    pattern = np.zeros((300, 400, 3), np.uint8)
    pattern[::20] = (255, 0, 255)
    Image.fromarray(pattern).save(folder / "photo.png")
    return folder / "photo.png"


def test_no_handler_opens_a_server_path_and_none_tells_which_paths_exist(app_url, planted, app_log):
    missing = planted.with_name("no-such-photo.png")
    for name, (fn, data) in image_handlers(app_url).items():
        answers = []
        for path in (planted, missing, planted.parent / ".." / planted.parent.name / planted.name):
            message = call(app_url, fn, [file_data(path), *data[1:]])
            text = json.dumps(message)
            assert message["success"] is False, (name, text[:300])
            assert (message["title"], message["output"]["error"]) == ("Not an image", webapp.guard.NOT_UPLOADED)
            assert "photo" not in text and "/file=" not in text and str(planted.parent) not in text, (name, text[:300])
            answers.append(json.dumps({k: v for k, v in message.items() if k not in ("event_id", "time")},
                                      sort_keys=True))
        # An existing file, a missing one and a path with "..": one and the same answer.
        assert len(set(answers)) == 1, (name, answers)
    log = app_log.read_text()
    assert "Traceback" not in log


def test_an_upload_still_searches_through_the_raw_protocol(app_url, rparis_dir):
    data = (rparis_dir / "jpg" / f"{INDEXED}.jpg").read_bytes()
    uploaded = httpx.post(app_url + "gradio_api/upload", files={"files": ("q.jpg", data, "image/jpeg")},
                          timeout=60).json()[0]
    fn, args = image_handlers(app_url)["/search"]
    message = call(app_url, fn, [file_data(uploaded), *args[1:]])
    assert message["success"] is True
    assert message["output"]["data"][0][0]["id"] == INDEXED


def test_the_file_route_serves_nothing_outside_the_cache(app_url, planted):
    for path in (planted, "/etc/passwd", ROOT / "app.py"):
        response = httpx.get(app_url + f"gradio_api/file={path}", timeout=30)
        assert response.status_code in (403, 404), (path, response.status_code)
        assert not response.content.startswith(b"\x89PNG") and b"import" not in response.content


# POST /api/search: every refusal in our format -------------------------------------------------------

def test_an_indexed_photo_sent_as_a_query_comes_first_with_diffusion_on(app_url, rparis_dir, lite0_index):
    meta = json.loads((lite0_index / "index.json").read_text())
    assert meta["diffusion"] and meta["dba"]  # the default recipe: the case that ranked it 3rd
    others = [sorted((rparis_dir / "jpg").glob(f"paris_{place}_*.jpg"))[0].stem for place in ("louvre", "pantheon")]
    for image_id in (INDEXED, *others):
        data = (rparis_dir / "jpg" / f"{image_id}.jpg").read_bytes()
        response = httpx.post(app_url + "api/search?k=5", files={"image": ("q.jpg", data, "image/jpeg")}, timeout=60)
        assert response.status_code == 200
        assert response.json()["results"][0]["id"] == image_id


@pytest.mark.parametrize("files, data, expected", [
    ({"image": (None, "hello")}, None,
     "No image to search: the field \"image\" must be a file, not text (curl -F image=@photo.jpg)."),
    ({"file": ("q.jpg", b"\xff\xd8", "image/jpeg")}, None,
     "No image to search: send the file as the multipart field \"image\", not 'file' (curl -F image=@photo.jpg)."),
])
def test_a_wrong_field_gets_our_error_not_fastapis_422(app_url, files, data, expected):
    response = httpx.post(app_url + "api/search", files=files, timeout=30)
    assert (response.status_code, response.json()) == (400, {"error": expected, "title": "No image"})


def test_a_body_that_is_not_multipart_and_a_get_get_our_error(app_url):
    response = httpx.post(app_url + "api/search", content=b"{}", headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 400 and set(response.json()) == {"error", "title"}
    response = httpx.get(app_url + "api/search", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"].startswith("Search with POST /api/search")


def test_a_long_address_gets_414_and_one_log_line(app_url, app_log):
    before = app_log.read_text().count("\n")
    for target in ("", "api/search", "gradio_api/info"):
        response = httpx.get(app_url + target + "?q=" + "a" * 20_000, timeout=30)
        assert response.status_code == 414, target
        assert response.json() == {"error": f"The address is over {webapp.http_api.MAX_URL_BYTES} bytes: send the query in "
                                   "the body.", "title": "Address too long"}
    # Past 64 KB, where the server used to answer 500 with a traceback (httpx will not send it: a raw request).
    host, port = app_url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET /?q={'a' * 70_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 414")
    time.sleep(0.5)
    added = app_log.read_text().splitlines()[before:]
    assert len([line for line in added if "refused (HTTP 414)" in line]) == 4
    assert not any("Traceback" in line for line in added)


def raw_post(url: str, headers: str, body_chunks, *, read_after: int = 0) -> tuple[bytes, int]:
    """Sends a raw POST /api/search; returns (what the server answered, body bytes sent before it answered)."""
    host, port = url.split("//")[1].strip("/").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(headers.encode())
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            if answer:
                break
            try:
                sock.setblocking(True)
                sock.settimeout(5)
                sock.sendall(chunk)
                sent += len(chunk)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                break
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except (ConnectionResetError, TimeoutError, OSError):
            pass
    return answer, sent


def test_a_2gb_body_is_refused_before_it_is_read(app_url):
    # Declared: refused on the headers, before one byte of the body.
    headers = ("POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               f"Content-Length: {2 * 1024 ** 3}\r\n\r\n")
    answer, sent = raw_post(app_url, headers, [b"\0" * (1 << 20)] * 2048)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert b"content-type: application/json" in answer.lower()
    assert sent < 25 * 1024 * 1024, sent
    # Chunked, with no length: read up to the cap, then refused.
    headers = ("POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               "Transfer-Encoding: chunked\r\n\r\n")
    part = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"100000\r\n" + b"\0" * 0x100000 + b"\r\n"] * 2048
    answer, sent = raw_post(app_url, headers, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert sent < 25 * 1024 * 1024, sent


def test_callers_beyond_the_waiting_room_get_503_at_once(lite0_index, lite0):
    import fastapi
    from fastapi.testclient import TestClient

    from retrieval.engine import SearchEngine
    from retrieval.index import load_index

    engine = SearchEngine(load_index(lite0_index), lite0)
    gate = webapp.gate.Gate(1, 3)
    server = fastapi.FastAPI()
    webapp.http_api.add_http_api(server, webapp.context.AppContext(
        engine, webapp.thumbnails.Thumbnails(engine.index, Path(lite0_index)), gate))
    photo = Image.new("RGB", (64, 48), (90, 120, 200))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    with TestClient(server) as client:
        assert all(gate.try_wait() for _ in range(3))  # three callers already wait
        t0 = time.perf_counter()
        response = client.post("/api/search?k=3", files={"image": ("q.png", buffer.getvalue(), "image/png")})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json() == {"error": "3 queries are already waiting; try again in a moment.", "title": "Busy"}
        assert time.perf_counter() - t0 < 5  # at once: no decoding, no queue (a bound for a stuck server only)
        gate.done_waiting()
        response = client.post("/api/search?k=3", files={"image": ("q.png", buffer.getvalue(), "image/png")})
        assert response.status_code == 200 and len(response.json()["results"]) == 3
        assert gate.try_wait() and not gate.try_wait()  # the one that ran left the room


def test_decoding_waits_for_the_gate_on_every_way_in(monkeypatch, tmp_path):
    """A 99-megapixel upload decodes only inside the gate: through /api/search, /search and the upload check."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    order = []

    class Watch(webapp.gate.Gate):
        def __enter__(self):
            order.append("enter")
            return super().__enter__()

        def __exit__(self, *exc):
            order.append("exit")
            return super().__exit__(*exc)

    def decode(source, name="the file", *, decode=None):
        order.append("decode")
        raise webapp.queries.QueryError("Not a usable image", "stop here")

    monkeypatch.setattr(webapp.queries, "decode_query", decode)
    (tmp_path / "q.png").write_bytes(b"x")
    engine = type("Engine", (), {"__len__": lambda self: 12, "index": {}, "decode": None})()
    ctx = webapp.context.AppContext(engine, None, Watch(1, 2), examples=["-"])
    webapp.http_api.http_search(ctx, b"x", 3, "")
    with pytest.raises(Exception):
        webapp.handlers.search(ctx, str(tmp_path / "q.png"), 3, "")
    webapp.handlers.check_upload(ctx, file_data(tmp_path / "q.png"))
    with pytest.raises(Exception):
        webapp.handlers.match_api(ctx, file_data(tmp_path / "q.png"), "", "x")
    assert order == ["enter", "decode", "exit"] * 4


# The process: port, signals --------------------------------------------------------------------------

def test_a_port_in_use_is_one_line_and_exit_1_before_loading_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--index", str(tmp_path / "none"),
                               "--host", "127.0.0.1", "--port", str(port)],
                              cwd=ROOT, env=app_env(tmp_path), capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1
    assert lines == [f"Cannot serve on 127.0.0.1:{port}: Address already in use. Is another program using it? "
                     "Choose another with --port."], proc.stderr
    assert "Serving on" not in proc.stderr
    print(f"port in use answered in {seconds:.1f} s")


def test_the_served_socket_answers_without_waiting_for_acks():
    """The port app.py binds first is one on which asyncio turns Nagle's algorithm off (TCP_NODELAY):
    with it on, every kept-alive request waited about 40 ms for the client's delayed ACK."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import webapp.server

    sock = webapp.server.bind("127.0.0.1", 0)

    async def accepted_nodelay() -> list[int]:
        seen = []

        async def on_client(reader, writer):
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_client, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return seen

    # In a thread of its own: an earlier test (Playwright) may have left an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        seen = pool.submit(lambda: asyncio.run(accepted_nodelay())).result(60)
    assert len(seen) == 1 and seen[0] != 0


def test_sigterm_removes_the_thumbnail_folder(lite0_index, tmp_path, monkeypatch):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    with running_app(["--index", str(lite0_index)], tmp_path / "webapp.queries.log", timeout=180) as url:
        assert httpx.get(url + "gradio_api/info", timeout=30).status_code == 200
        folders = list(private_tmp.glob("landmark-thumbnails-*"))
        assert len(folders) == 1
        pid = int(subprocess.run(["pgrep", "-f", "--", f"--port {url.rsplit(':', 1)[1].strip('/')}"],
                                 capture_output=True, text=True).stdout.split()[0])
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not folders[0].exists():
                break
            time.sleep(0.1)
        assert not folders[0].exists()


# The build: a full disk, a read-only folder, a killed save -----------------------------------------

@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(autouse=True)
def tiny_command_network(tiny, monkeypatch):
    """precompute.build_index builds the tiny network here (the command itself offers only real ones)."""
    from precompute import build_index

    monkeypatch.setattr(build_index, "network_from_args", lambda args: tiny)


def build(photos, out, capsys) -> tuple[int, list[str]]:
    from precompute import build_index

    code = build_index.main(["--images", str(photos), "--out", str(out), "--dba", "0", "--no-diffusion"])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith(("error", "Traceback"))]


def leftovers(out: Path) -> list[str]:
    beside = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    cache = out / ".cache"
    inside = [p.name for p in cache.iterdir() if p.name.startswith(".")] if cache.is_dir() else []
    return beside + inside


def test_a_full_disk_during_the_save_is_one_line_exit_1_no_debris_and_the_old_index_intact(photos, tmp_path,
                                                                                          capsys, monkeypatch):
    import retrieval.index as index_module
    from retrieval.index import load_index

    out = tmp_path / "idx"
    assert build(photos, out, capsys)[0] == 0
    Image.new("RGB", (64, 48), (1, 2, 3)).save(photos / "p9.png")
    real_save = np.save

    def full(path, array, *args, **kwargs):
        if str(path).endswith("feature_id.npy"):
            Path(path).write_bytes(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(index_module.np, "save", full)
    code, lines = build(photos, out, capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("error: cannot write (") and lines[0].endswith(
        "): the disk is full: free some space, or write the index elsewhere")
    assert leftovers(out) == []
    assert len(load_index(out)) == 5  # the previous index, as it was


def test_a_full_disk_while_caching_descriptors_leaves_no_half_shard(photos, tmp_path, capsys, monkeypatch):
    import retrieval.build as build_module

    real = build_module.np.savez

    def full(path, **arrays):
        Path(path).write_bytes(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(build_module.np, "savez", full)
    code, lines = build(photos, tmp_path / "idx", capsys)
    assert code == 1 and len(lines) == 1 and "the disk is full" in lines[0]
    assert leftovers(tmp_path / "idx") == []
    monkeypatch.setattr(build_module.np, "savez", real)
    assert build(photos, tmp_path / "idx", capsys)[0] == 0


def test_a_read_only_output_folder_is_one_line_exit_1(photos, tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == ".cache":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, lines = build(photos, tmp_path / "idx", capsys)
    assert (code, len(lines)) == (1, 1)
    assert lines[0].endswith(".cache): the folder is on a read-only file system: write the index elsewhere")


def test_the_next_build_removes_what_a_killed_save_left(photos, tmp_path, capsys):
    from retrieval.index import load_index

    out = tmp_path / "idx"
    assert build(photos, out, capsys)[0] == 0
    # What kill -9 during the save leaves: a half-written folder named with the dead build's pid, and
    # a half-written shard in the cache.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".idx.new-{dead.pid}-x1y2"
    left.mkdir()
    (left / "feature_list.npy").write_bytes(b"\0" * 4096)
    (out / ".cache" / ".shard-000009.tmp.npz").write_bytes(b"PK partial")
    (out / ".cache" / ".state.json.tmp").write_text("{")
    assert build(photos, out, capsys)[0] == 0
    assert leftovers(out) == [] and len(load_index(out)) == 5
