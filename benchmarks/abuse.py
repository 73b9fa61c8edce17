"""Load and abuse benchmark: what a hostile client can cost a running app, in time and memory.

    python -m benchmarks.abuse --index DIR [--json results/abuse.json] [--rounds 3]

Starts `app.py --index DIR` on a free port of 127.0.0.1 and measures, sampling the app's
resident memory (VmRSS) every 50 ms:
- 100 concurrent POST /api/search: how many get 200 and how many 503, and how long each waited;
- 4 concurrent 99-megapixel PNGs (0.3 MB each), through POST /api/search and through Gradio's
  upload with its upload check and /search;
- rounds of 20 clients x 10 requests of the Paris query crops (POST /api/search);
- a 2 GB body, declared and chunked: how many bytes were sent before the 413.
Writes a JSON results file whose `tables.abuse` the README shows (benchmarks.readme_tables).
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.benchmark import machine_info
from benchmarks.parts import _proc_kb
from benchmarks.report import save_results
from tests.appserver.process import ROOT, app_env, free_port, stop, wait_until_up

CROPS = ROOT.parent / "shared" / "data" / "rparis6k" / "query_crops"
MEGAPIXELS_99 = (11_000, 9_000)


class App:
    """app.py in a subprocess (as the tests start it), with its resident memory sampled in the background."""

    def __init__(self, index: Path, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        log_path = folder / "app.log"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--index", str(index), "--port",
                                      str(self.port)], cwd=ROOT, env=app_env(folder), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.peak, self._sampling = 0, True
        try:
            wait_until_up(self.url, self.proc, log_path, timeout=300)
        except RuntimeError as e:
            self.stop()
            raise SystemExit(str(e)) from None
        threading.Thread(target=self._sample, daemon=True).start()

    def rss_mb(self) -> float:
        return (_proc_kb(f"/proc/{self.proc.pid}/status", "VmRSS") or 0) / 1024

    def _sample(self) -> None:
        while self._sampling and self.proc.poll() is None:
            self.peak = max(self.peak, self.rss_mb())
            time.sleep(0.05)

    def phase(self):
        """Starts a phase: returns a function that gives (RSS before, peak RSS since) in MB."""
        before = self.rss_mb()
        self.peak = before
        return lambda: (before, self.peak)

    def stop(self) -> None:
        self._sampling = False
        stop(self.proc)
        self.log.close()


def huge_png() -> bytes:
    """A 99-megapixel PNG of one colour: about 0.3 MB to send, about 0.9 GB to decode."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", MEGAPIXELS_99, (120, 130, 140)).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


_HTTP = None


def http():
    """One client for every thread: creating one per request cost the client seconds of CPU under 100 threads."""
    global _HTTP
    if _HTTP is None:
        import httpx

        _HTTP = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
    return _HTTP


def post_search(url: str, data: bytes, name: str = "q.jpg", k: int = 10) -> tuple[int, float]:
    t0 = time.perf_counter()
    response = http().post(url + f"api/search?k={k}", files={"image": (name, data)})
    return response.status_code, (time.perf_counter() - t0) * 1000


def gradio_upload_search(url: str, data: bytes) -> tuple[int, float]:
    """Upload, the upload check, then /search: what the page does with a new file."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(timeout=300) as http:
        path = http.post(url + "gradio_api/upload", files={"files": ("huge.png", data, "image/png")}).json()[0]
        config = http.get(url + "config").json()
        fn = next(d.get("id", i) for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "search")
        session = uuid.uuid4().hex[:11]
        http.post(url + "gradio_api/queue/join", json={
            "data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 5, ""], "fn_index": fn,
            "session_hash": session}).raise_for_status()
        ok = False
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and '"process_completed"' in line:
                    ok = json.loads(line[5:])["success"]
                    break
    return (200 if ok else 500), (time.perf_counter() - t0) * 1000


def concurrent(fn, jobs: list) -> list:
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: fn(*job), jobs))


def body_sent_before_refusal(url: str, chunked: bool, total: int = 2 * 1024 ** 3) -> tuple[int, int]:
    """Sends a POST /api/search of `total` bytes; returns (HTTP status, body bytes sent before the answer)."""
    host, port = url.split("//")[1].strip("/").split(":")
    part = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n')
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = f"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n{length}\r\n\r\n"
    block = b"\0" * (1 << 20)
    sent, answer = 0, b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.001)
        while sent < total and not answer:
            payload = part if sent == 0 else block
            frame = b"%x\r\n%s\r\n" % (len(payload), payload) if chunked else payload
            try:
                sock.settimeout(10)
                sock.sendall(frame)
                sent += len(payload)
                sock.settimeout(0.001)
                answer = sock.recv(100)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                break
        if not answer:
            sock.settimeout(10)
            try:
                answer = sock.recv(100)
            except OSError:
                pass
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1") else 0
    return status, sent


def crops() -> list[bytes]:
    files = sorted(CROPS.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no query crops in {CROPS} (../shared/data holds the Paris photos)")
    return [f.read_bytes() for f in files]


def measure(index: Path, rounds: int) -> dict:
    photos = crops()
    with tempfile.TemporaryDirectory(prefix="abuse-") as folder:
        app = App(index, Path(folder))
        try:
            out = {"idle_rss_mb": round(app.rss_mb())}
            post_search(app.url, photos[0])  # warm

            done = app.phase()
            results = concurrent(post_search, [(app.url, photos[i % len(photos)]) for i in range(100)])
            ok = sorted(ms for status, ms in results if status == 200)
            busy = sorted(ms for status, ms in results if status == 503)
            out["burst_100"] = {"ok": len(ok), "busy": len(busy), "other": 100 - len(ok) - len(busy),
                                "ok_median_ms": round(statistics.median(ok)) if ok else None,
                                "ok_max_ms": round(max(ok)) if ok else None,
                                "busy_median_ms": round(statistics.median(busy)) if busy else None,
                                "busy_max_ms": round(max(busy)) if busy else None,
                                "peak_rss_mb": round(done()[1])}

            huge = huge_png()
            for name, fn in (("huge_http", post_search), ("huge_gradio", gradio_upload_search)):
                done = app.phase()
                args = [(app.url, huge, "huge.png")] if fn is post_search else [(app.url, huge)]
                statuses = [s for s, _ in concurrent(fn, args * 4)]
                out[name] = {"statuses": statuses, "png_mb": round(len(huge) / 1e6, 2), "peak_rss_mb": round(done()[1])}

            done = app.phase()
            walls = []
            for _ in range(rounds):
                for batch in concurrent(lambda i: [post_search(app.url, photos[(i + j) % len(photos)])
                                                   for j in range(10)], [(i,) for i in range(20)]):
                    walls += batch
            out["clients_20x10"] = {"rounds": rounds, "requests": len(walls),
                                    "ok": sum(1 for s, _ in walls if s == 200),
                                    "busy": sum(1 for s, _ in walls if s == 503),
                                    "peak_rss_mb": round(done()[1]), "end_rss_mb": round(app.rss_mb())}

            for name, chunked in (("body_2gb_declared", False), ("body_2gb_chunked", True)):
                status, sent = body_sent_before_refusal(app.url, chunked)
                time.sleep(0.5)
                logged = [line for line in (Path(folder) / "app.log").read_text().splitlines() if "(HTTP 413)" in line]
                read = int(logged[-1].rsplit("(", 1)[1].split()[0]) if logged else None
                out[name] = {"status": status, "sent_mb": round(sent / 2 ** 20, 1),
                             "read_mb": None if read is None else round(read / 2 ** 20, 2)}
        finally:
            app.stop()
    return out


def table(m: dict) -> dict:
    burst = m["burst_100"]
    rows = [
        ["100 concurrent `POST /api/search`",
         f"{burst['ok']} × 200 (median {burst['ok_median_ms']} ms, max {burst['ok_max_ms']} ms); "
         f"{burst['busy']} × 503 (max {burst['busy_max_ms']} ms)", burst["peak_rss_mb"]],
        ["4 concurrent 99-megapixel PNGs, `POST /api/search`", ", ".join(map(str, m["huge_http"]["statuses"])),
         m["huge_http"]["peak_rss_mb"]],
        ["4 concurrent 99-megapixel PNGs, Gradio upload + `/search`", ", ".join(map(str, m["huge_gradio"]["statuses"])),
         m["huge_gradio"]["peak_rss_mb"]],
        [f"{m['clients_20x10']['rounds']} rounds of 20 clients × 10 requests",
         f"{m['clients_20x10']['ok']} × 200, {m['clients_20x10']['busy']} × 503", m["clients_20x10"]["peak_rss_mb"]],
        *[[what, f"{m[key]['status']} after {m[key]['read_mb']} MB read by the server "
           f"({m[key]['sent_mb']} MB sent into the socket)", ""]
          for what, key in (("2 GB body, `Content-Length` declared", "body_2gb_declared"),
                            ("2 GB body, chunked", "body_2gb_chunked"))],
    ]
    return {"columns": ["what a client sends", "what it gets", "app peak RSS (MB)"], "align": "llr", "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.abuse", description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="an index folder (precompute.build_index)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 20 clients x 10 requests (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (e.g. results/abuse.json)")
    args = parser.parse_args(argv)
    measured = measure(args.index, args.rounds)
    results = {
        "command": "python -m benchmarks.abuse --index INDEX --json results/abuse.json",
        "machine": machine_info(),
        "index_images": json.loads((args.index / "index.json").read_text())["count"],
        "measured": measured,
        "tables": {"abuse": table(measured)},
    }
    save_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
