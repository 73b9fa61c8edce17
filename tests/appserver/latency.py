"""Measures the app through its /search API: launch-to-first-answer, warm latency, concurrency.

    python -m tests.appserver.latency --index DIR [--queries 100] [--clients 20] [--concurrency 1 2]

Starts app.py on a free local port for each --concurrency value, as the tests do, and prints one
line per measurement. Not a test: timings depend on the machine and whatever else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client, handle_file

from tests.appserver.process import ROOT, running_app

CROPS = ROOT.parent / "shared" / "data" / "rparis6k" / "query_crops"


def ask(client: Client, image: Path, k: int = 20, server: list | None = None) -> float:
    """Returns the wall time of one /search call in ms; appends the app's own timings to `server`."""
    t0 = time.perf_counter()
    _, _, timings = client.predict(image={"background": handle_file(str(image))}, k=k, box="", api_name="/search")
    if server is not None:
        server.append(timings)
    return (time.perf_counter() - t0) * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(index: Path, concurrency: int, queries: int, clients: int, crops: list[Path]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with running_app(["--index", str(index), "--concurrency", str(concurrency)], Path(tmp) / "app.log") as url:
            client = Client(url, verbose=False)
            ask(client, crops[0])
            first = time.perf_counter() - started
            server = []
            warm = [ask(client, crops[i % len(crops)], server=server) for i in range(queries)]
            # Without downloading the 20 result thumbnails, as a caller wanting only ids would.
            bare_client = Client(url, verbose=False, download_files=False)
            bare = [ask(bare_client, crops[i % len(crops)]) for i in range(queries)]
            # Clients made beforehand and no thumbnail downloads: this times the app, not the callers.
            callers = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                burst = list(pool.map(lambda i: ask(callers[i], crops[i % len(crops)]), range(clients)))
            wall = time.perf_counter() - t0
    embed = [t["embed_ms"] for t in server]
    search = [t["search_ms"] for t in server]
    print(f"concurrency_limit={concurrency}: launch to first answer {first:.1f} s", flush=True)
    print(f"  warm /search, k=20, {queries} sequential calls: median {statistics.median(warm):.0f} ms, "
          f"p95 {percentile(warm, 0.95):.0f} ms with the thumbnails downloaded; "
          f"median {statistics.median(bare):.0f} ms, p95 {percentile(bare, 0.95):.0f} ms without", flush=True)
    print(f"  inside the app: embedding median {statistics.median(embed):.0f} ms (p95 {percentile(embed, 0.95):.0f}), "
          f"search median {statistics.median(search):.1f} ms (p95 {percentile(search, 0.95):.1f})", flush=True)
    print(f"  {clients} clients at once (no downloads): all answered in {wall:.1f} s; per client median "
          f"{statistics.median(burst):.0f} ms, max {max(burst):.0f} ms", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    crops = sorted(CROPS.glob("*.jpg"))
    for concurrency in args.concurrency:
        measure(args.index, concurrency, args.queries, args.clients, crops)


if __name__ == "__main__":
    main()
