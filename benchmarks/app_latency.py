"""Measures the app through each way of calling it: its refusals at start-up, launch-to-first-answer, warm latency.

    .venv/bin/python -m benchmarks.app_latency --index DIR [--queries 40] [--clients 20] [--concurrency 1] [--json FILE]

First, how fast `app.py` refuses what cannot work (each run 5 times, in a fresh process): a port
in use, a missing --images folder, no index at all, an --index that is not one. Then it starts
app.py on a free local port for each --concurrency value, as the tests do. Warm, sequential calls
cycling over the query crops, each way of calling in turn:

- the plain HTTP endpoint, POST /api/search (httpx, one kept-alive connection), k = 20;
- Gradio's protocol by hand (httpx): upload, queue join, event stream, each timed, k = 20;
- the JavaScript client, @gradio/client from npm, run by node (benchmarks/js; `npm ci` there), k = 20;
- Python's gradio_client as a newcomer calls it: `Client(url).predict(image=handle_file(p),
  api_name="/search")`, no option at all (k defaults to 20);
- /match through the JavaScript client (the match view of the first result).

The overhead of a call is its wall time less the app's own embed + search time for that call (the
timings it returns). Prints one line per measurement; --json also writes them, with the tables of
docs/app.md, to FILE. Not a test: timings depend on the machine and whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

from benchmarks.benchmark import machine_info
from benchmarks.report import save_results
from tests.appserver.process import ROOT, app_env, free_port, running_app

CROPS = ROOT.parent / "shared" / "data" / "rparis6k" / "query_crops"
JS_DIR = Path(__file__).resolve().parent / "js"
K = 20
# Overhead targets over the app's own time (issue 12), and the plain Python call's whole time (issue 29).
TARGETS = {"javascript": 40.0, "http": 15.0}
PYTHON_TARGET_MS = 200.0
# The start-up refusals (issue 29): each answers in one line, exit status 1, within this many seconds.
REFUSAL_TARGET_S = 3.0
REFUSAL_RUNS = 5


def ask(client: Client, image: Path, server: list | None = None) -> float:
    """Returns the wall time of one plain /search call in ms (no option: k is the default 20);
    appends the app's own timings to `server`."""
    t0 = time.perf_counter()
    _, timings = client.predict(image=handle_file(str(image)), api_name="/search")
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
            own.append(output["data"][1]["total_ms"])
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


def by_python(url: str, crops: list[Path], queries: int) -> dict:
    """gradio_client as a newcomer calls it: Client(url), every default kept."""
    client = Client(url, verbose=False)
    ask(client, crops[0])
    server: list[dict] = []
    walls = [ask(client, crops[i % len(crops)], server=server) for i in range(queries)]
    return summary(walls, [t["total_ms"] for t in server])


def refusals(index: Path, runs: int = REFUSAL_RUNS) -> dict:
    """Times `app.py` refusing what cannot work, in fresh processes: {case: {median_s, max_s, exit, lines}}."""
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "not-an-index").mkdir()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            commands = {
                "port in use": ["--index", str(index), "--port", str(taken.getsockname()[1])],
                "--images folder missing": ["--images", str(tmp / "missing"), "--port", str(free_port())],
                "no index at all": ["--port", str(free_port())],
                "--index not an index": ["--index", str(tmp / "not-an-index"), "--port", str(free_port())],
            }
            env = app_env(tmp)
            for case, args in commands.items():
                walls, answers = [], set()
                for _ in range(runs):
                    t0 = time.perf_counter()
                    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", *args],
                                          cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
                    walls.append(time.perf_counter() - t0)
                    said = done.stderr.strip().splitlines() or [""]
                    # The first line as written, with this run's folder and port in words.
                    first = said[0].replace(str(tmp), "TMP").replace(str(ROOT), "REPO")
                    first = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", first)
                    answers.add((done.returncode, len(said), first))
                (code, lines, first), = answers  # every run answers alike
                cases[case] = {"median_s": statistics.median(walls), "max_s": max(walls), "exit": code,
                               "lines": lines, "first_line": first}
    return cases


def measure(index: Path, concurrency: int, queries: int, clients: int, crops: list[Path]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with running_app(["--index", str(index), "--concurrency", str(concurrency)], Path(tmp) / "app.log") as url:
            ask(Client(url, verbose=False), crops[0])
            first = time.perf_counter() - started
            ways = {
                "http": by_http(url, crops, queries),
                "protocol": by_protocol(url, crops, queries),
                "javascript": by_javascript(url, crops, queries),
                "python": by_python(url, crops, queries),
            }
            # Clients made beforehand: this times the app, not the callers.
            callers = [Client(url, verbose=False) for _ in range(clients)]
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
             "python": "gradio_client, the plain call"}
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
    lines.append(f"  {b['clients']} clients at once: all answered in {b['all_answered_s']:.1f} s; "
                 f"per client median {b['median_ms']:.0f} ms, max {b['max_ms']:.0f} ms")
    return lines


def refusal_lines(cases: dict) -> list[str]:
    return [f"  app.py, {case}: median {c['median_s']:.2f} s (max {c['max_s']:.2f}), exit {c['exit']}, "
            f"{c['lines']} line(s): {c['first_line']}" for case, c in cases.items()]


def readme_tables(m: dict, command: str, cases: dict) -> dict:
    """Returns the tables of docs/app.md (see benchmarks/readme_tables.py) from one measurement."""

    def row(name, s, target=None, whole=False):
        measured = s["median_ms"] if whole else s["overhead_median_ms"]
        verdict = "" if target is None else (
            ("whole call " if whole else "") + f"≤ {target:g}: " + ("PASS" if measured <= target else "MISS"))
        return [name, f"{s['median_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['app_median_ms']:.1f}",
                f"{s['overhead_median_ms']:.1f}", verdict]

    own = m["http"]["app_median_ms"]
    rows = [["the app's own embed + search (timings it returns)", f"{own:.1f}", "", f"{own:.1f}", "0", ""],
            row("plain HTTP, `POST /api/search` (httpx, kept-alive)", m["http"], TARGETS["http"])]
    if "skipped" not in m["javascript"]:
        rows.append(row("JavaScript `@gradio/client` 2.7.0 (node)", m["javascript"]["search"], TARGETS["javascript"]))
    rows += [row("Gradio protocol by hand (httpx: upload, join, stream)", m["protocol"]),
             row("Python `gradio_client`, the plain call `Client(url).predict(image=..., api_name=\"/search\")`",
                 m["python"], PYTHON_TARGET_MS, whole=True)]
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
    tables["app_refusals"] = {
        "columns": ["app.py started with", "what it says (first line)", "lines", "exit", "median s", "max s",
                    "target"], "align": "llrrrrl",
        "rows": [[case, f"`{c['first_line']}`", c["lines"], c["exit"], f"{c['median_s']:.2f}",
                  f"{c['max_s']:.2f}", f"≤ {REFUSAL_TARGET_S:g} s: " + ("PASS" if c["max_s"] <= REFUSAL_TARGET_S
                                                                        else "MISS")]
                 for case, c in cases.items()]}
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
    machine = machine_info()
    cases = refusals(args.index)
    print("\n".join(refusal_lines(cases)), flush=True)
    runs = []
    for concurrency in args.concurrency:
        runs.append(measure(args.index, concurrency, args.queries, args.clients, crops))
        print("\n".join(report_lines(runs[-1])), flush=True)
    if args.json:
        command = (".venv/bin/python -m benchmarks.app_latency --index INDEX --queries "
                   f"{args.queries} --concurrency {' '.join(map(str, args.concurrency))}")
        meta = json.loads((args.index / "index.json").read_text())
        info = {"command": command, "index_count": meta["count"], "network": meta["network"], "machine": machine,
                "refusals": cases, "runs": runs, "tables": readme_tables(runs[0], command, cases)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        save_results(info, args.json)


if __name__ == "__main__":
    main()
