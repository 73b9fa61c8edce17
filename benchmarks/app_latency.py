"""Measures the app through each way of calling it: launch-to-first-answer, warm latency, concurrency.

    python -m benchmarks.app_latency --index DIR [--queries 40] [--clients 20] [--concurrency 1] [--json FILE]

Starts app.py on a free local port for each --concurrency value, as the tests do. Warm, k = 20,
sequential calls cycling over the query crops, each way of calling in turn:

- the plain HTTP endpoint, POST /api/search (httpx, one kept-alive connection);
- Gradio's protocol by hand (httpx): upload, queue join, event stream, each timed;
- the JavaScript client, @gradio/client from npm, run by node (benchmarks/js; `npm ci` there);
- Python's gradio_client with download_files=False, and with the 20 result thumbnails downloaded;
- /match through the JavaScript client (the match view of the first result).

The overhead of a call is its wall time less the app's own embed + search time for that call (the
timings it returns). Prints one line per measurement; --json also writes them, with the README's
table, to FILE. Not a test: timings depend on the machine and whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

from tests.appserver.process import ROOT, running_app

CROPS = ROOT.parent / "shared" / "data" / "rparis6k" / "query_crops"
JS_DIR = Path(__file__).resolve().parent / "js"
K = 20
# Overhead targets over the app's own time (issue 12).
TARGETS = {"javascript": 40.0, "http": 15.0}


def ask(client: Client, image: Path, k: int = K, server: list | None = None) -> float:
    """Returns the wall time of one /search call in ms; appends the app's own timings to `server`."""
    t0 = time.perf_counter()
    _, _, timings = client.predict(image=handle_file(str(image)), k=k, api_name="/search")
    if server is not None:
        server.append(timings)
    return (time.perf_counter() - t0) * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(walls: list[float], own: list[float] | None = None) -> dict:
    """Returns median and p95 of the wall times, and of the overhead over the app's own times when given."""
    out = {"calls": len(walls), "median_ms": statistics.median(walls), "p95_ms": percentile(walls, 0.95)}
    if own is not None:
        overhead = [w - o for w, o in zip(walls, own)]
        out.update(app_median_ms=statistics.median(own), overhead_median_ms=statistics.median(overhead),
                   overhead_p95_ms=percentile(overhead, 0.95))
    return out


def by_http(url: str, crops: list[Path], queries: int) -> dict:
    walls, own = [], []
    with httpx.Client(timeout=60) as http:
        for i in range(queries + 1):
            crop = crops[i % len(crops)]
            data = crop.read_bytes()
            t0 = time.perf_counter()
            response = http.post(url + "api/search", params={"k": K}, files={"image": (crop.name, data, "image/jpeg")})
            wall = (time.perf_counter() - t0) * 1000
            response.raise_for_status()
            if i:  # the first call opens the connection
                walls.append(wall)
                own.append(response.json()["timings"]["total_ms"])
    return summary(walls, own)


def search_fn_index(http: httpx.Client, url: str) -> int:
    config = http.get(url + "config").json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == "search")


def by_protocol(url: str, crops: list[Path], queries: int) -> dict:
    """Gradio's own protocol with nothing around it: the least a Gradio client can take."""
    phases = {"upload": [], "join": [], "stream": []}
    walls, own = [], []
    with httpx.Client(timeout=60) as http:
        fn_index = search_fn_index(http, url)
        for i in range(queries + 1):
            crop = crops[i % len(crops)]
            data = crop.read_bytes()
            session = uuid.uuid4().hex[:11]
            t0 = time.perf_counter()
            path = http.post(url + "gradio_api/upload", files={"files": (crop.name, data, "image/jpeg")}).json()[0]
            t1 = time.perf_counter()
            image = {"path": path, "orig_name": crop.name, "meta": {"_type": "gradio.FileData"}}
            http.post(url + "gradio_api/queue/join", json={
                "data": [image, K, ""], "fn_index": fn_index, "session_hash": session, "event_data": None,
                "trigger_id": None}).raise_for_status()
            t2 = time.perf_counter()
            output = None
            with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        message = json.loads(line[5:])
                        if message.get("msg") == "process_completed":
                            output = message["output"]
                            break
            t3 = time.perf_counter()
            if not i:
                continue
            phases["upload"].append((t1 - t0) * 1000)
            phases["join"].append((t2 - t1) * 1000)
            phases["stream"].append((t3 - t2) * 1000)
            walls.append((t3 - t0) * 1000)
            own.append(output["data"][2]["total_ms"])
    out = summary(walls, own)
    out["phases_median_ms"] = {name: statistics.median(v) for name, v in phases.items()}
    return out


def by_javascript(url: str, crops: list[Path], queries: int) -> dict:
    if not (JS_DIR / "node_modules" / "@gradio" / "client").is_dir():
        return {"skipped": f"@gradio/client is not installed: run `npm ci` in {JS_DIR.relative_to(ROOT)}"}
    done = subprocess.run(["node", "time_client.mjs", url, str(queries), *map(str, crops)], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=600, check=True)
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    search = summary([c["wall_ms"] for c in calls["search"]], [c["total_ms"] for c in calls["search"]])
    return {"search": search, "match": summary([c["wall_ms"] for c in calls["match"]])}


def by_python(url: str, crops: list[Path], queries: int, *, download: bool) -> dict:
    client = Client(url, verbose=False, download_files=download)
    ask(client, crops[0])
    server: list[dict] = []
    walls = [ask(client, crops[i % len(crops)], server=server) for i in range(queries)]
    return summary(walls, [t["total_ms"] for t in server])


def measure(index: Path, concurrency: int, queries: int, clients: int, crops: list[Path]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with running_app(["--index", str(index), "--concurrency", str(concurrency)], Path(tmp) / "app.log") as url:
            ask(Client(url, verbose=False, download_files=False), crops[0])
            first = time.perf_counter() - started
            ways = {
                "http": by_http(url, crops, queries),
                "protocol": by_protocol(url, crops, queries),
                "javascript": by_javascript(url, crops, queries),
                "python": by_python(url, crops, queries, download=False),
                "python_download": by_python(url, crops, queries, download=True),
            }
            # Clients made beforehand and no thumbnail downloads: this times the app, not the callers.
            callers = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                burst = list(pool.map(lambda i: ask(callers[i], crops[i % len(crops)]), range(clients)))
            wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "launch_to_first_answer_s": first, **ways,
            "burst": {"clients": clients, "all_answered_s": wall, "median_ms": statistics.median(burst),
                      "max_ms": max(burst)}}


def report_lines(m: dict) -> list[str]:
    lines = [f"concurrency_limit={m['concurrency']}: launch to first answer {m['launch_to_first_answer_s']:.1f} s"]
    names = {"http": "POST /api/search (httpx)", "protocol": "Gradio protocol by hand (httpx)",
             "python": "gradio_client, download_files=False", "python_download": "gradio_client, downloads"}
    for key, name in names.items():
        s = m[key]
        lines.append(f"  {name}: median {s['median_ms']:.1f} ms (p95 {s['p95_ms']:.1f}); app's own "
                     f"{s['app_median_ms']:.1f} ms; overhead median {s['overhead_median_ms']:.1f} ms")
    js = m["javascript"]
    if "skipped" in js:
        lines.append(f"  @gradio/client: skipped: {js['skipped']}")
    else:
        s = js["search"]
        lines.append(f"  @gradio/client: median {s['median_ms']:.1f} ms (p95 {s['p95_ms']:.1f}); app's own "
                     f"{s['app_median_ms']:.1f} ms; overhead median {s['overhead_median_ms']:.1f} ms")
        lines.append(f"  /match via @gradio/client: median {js['match']['median_ms']:.0f} ms "
                     f"(p95 {js['match']['p95_ms']:.0f})")
    phases = m["protocol"]["phases_median_ms"]
    lines.append("  Gradio protocol phases, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    b = m["burst"]
    lines.append(f"  {b['clients']} clients at once (no downloads): all answered in {b['all_answered_s']:.1f} s; "
                 f"per client median {b['median_ms']:.0f} ms, max {b['max_ms']:.0f} ms")
    return lines


def readme_tables(m: dict, command: str) -> dict:
    """Returns the README's tables (see benchmarks/readme_tables.py) from one measurement."""

    def row(name, s, target=None):
        verdict = "" if target is None else (f"≤ {target:g}: " + ("PASS" if s["overhead_median_ms"] <= target else "MISS"))
        return [name, f"{s['median_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['app_median_ms']:.1f}",
                f"{s['overhead_median_ms']:.1f}", verdict]

    own = m["http"]["app_median_ms"]
    rows = [["the app's own embed + search (timings it returns)", f"{own:.1f}", "", f"{own:.1f}", "0", ""],
            row("plain HTTP, `POST /api/search` (httpx, kept-alive)", m["http"], TARGETS["http"])]
    if "skipped" not in m["javascript"]:
        rows.append(row("JavaScript `@gradio/client` 2.7.0 (node)", m["javascript"]["search"], TARGETS["javascript"]))
    rows += [row("Gradio protocol by hand (httpx: upload, join, stream)", m["protocol"]),
             row("Python `gradio_client`, `download_files=False`", m["python"]),
             row("Python `gradio_client`, downloading the 20 thumbnails", m["python_download"])]
    tables = {"app_latency": {"columns": ["way of calling /search (k = 20, warm)", "median ms", "p95 ms",
                                          "app's own ms", "overhead ms", "overhead target"],
                              "align": "lrrrrl", "rows": rows}}
    phases = m["protocol"]["phases_median_ms"]
    extra = [["upload (`POST /gradio_api/upload`)", f"{phases['upload']:.1f}"],
             ["queue join (`POST /gradio_api/queue/join`)", f"{phases['join']:.1f}"],
             ["event stream until `process_completed` (includes the app's own time)", f"{phases['stream']:.1f}"]]
    if "skipped" not in m["javascript"]:
        extra.append(["match view, `/match` through `@gradio/client` (wall)",
                      f"{m['javascript']['match']['median_ms']:.0f}"])
    extra.append(["launch to first answered query (s)", f"{m['launch_to_first_answer_s']:.1f}"])
    tables["app_latency_parts"] = {"columns": ["part", "median ms"], "align": "lr", "rows": extra}
    return tables


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    parser.add_argument("--json", type=Path, default=None, help="write the figures and the README tables here")
    args = parser.parse_args(argv)
    crops = sorted(CROPS.glob("*.jpg"))
    runs = []
    for concurrency in args.concurrency:
        runs.append(measure(args.index, concurrency, args.queries, args.clients, crops))
        print("\n".join(report_lines(runs[-1])), flush=True)
    if args.json:
        command = ("python -m benchmarks.app_latency --index INDEX --queries "
                   f"{args.queries} --concurrency {' '.join(map(str, args.concurrency))}")
        info = {"command": command, "index_count": json.loads((args.index / "index.json").read_text())["count"],
                "network": json.loads((args.index / "index.json").read_text())["network"],
                "machine": {"python": platform.python_version(), "processor": platform.processor(),
                            "cores": os.cpu_count()},
                "runs": runs, "tables": readme_tables(runs[0], command)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
