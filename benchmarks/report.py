"""The benchmark's results as markdown and as a log-log plot; pure formatting of the results dict."""

from __future__ import annotations

import json
from pathlib import Path

GB = 1e9


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(*headers) -> list[str]:
    return [_row(*headers), _row(*["---"] * len(headers))]


def _gb(b) -> str:
    return f"{b / GB:.2f}"


SMOKE_NOTE = ("**Smoke run (--quick).** Every part runs, at reduced sizes (fewer queries, smaller databases, "
              "Lite0 only) that are not the targets' sizes: its PASS and MISS verdicts say nothing about the "
              "targets. Run without --quick for those.")


def format_report(results: dict) -> str:
    """Returns the whole benchmark as markdown: machine, the five sections, then the targets."""
    m = results["machine"]
    out = [
        "# Benchmark", "",
        f"`{results['command']}` on {m['nproc']} cores ({m['cpu']}), {m['mem_total_bytes'] / GB:.0f} GB, Python "
        f"{m['python']}; load average {m['load_start'][0]:.2f} at start, {m['load_end'][0]:.2f} at end; "
        f"{results['seconds']:.0f} s in all.",
    ]
    if results.get("smoke"):
        out += ["", SMOKE_NOTE]
    # A run of some sections only (--only) leaves the others out.
    needs = {_latency: "latency", _search: "search", _build: "build", _index: "coldstart"}
    for section in (_latency, _search, _build, _index, _memory, _targets):
        if needs.get(section, "machine") in results:
            out += ["", *section(results)]
    return "\n".join(out) + "\n"


def _latency(results: dict) -> list[str]:
    plan = results["plan"]
    out = [
        "## 1. Query latency, end to end (image file in, ranked ids out)", "",
        "SearchEngine.search(path, k=10): decode, resize, network, pooling, KD-tree search (twice with query "
        "expansion, as an index built with the defaults records it), over a database of synthetic unit vectors; "
        f"{plan['latency_queries']} timed queries cycling over the query crops after warm_up() and "
        f"{plan['warm_queries']} untimed queries.", "",
        *_table("network", "pipeline", "runtime", "d", "DB rows", "QE k", "tree build s", "total median ms",
                "total p95 ms", "embed median ms", "search median ms", "peak RSS GB"),
    ]
    for r in results["latency"]:
        name = ("report (224x224 squash, flatten)" if r["pipeline"] == "report"
                else f"default (GeM, max side {r.get('max_side', plan['max_side'])})")
        head = (r["network"], name, r.get("runtime", "keras"), r["dim"], r["n_db"], r.get("qe", ""))
        if "skipped" in r:
            out.append(_row(*head, r["skipped"], *[""] * 5))
            continue
        out.append(_row(*head, f"{r['tree_build_s']:.2f}", f"{r['total']['median_ms']:.1f}",
                        f"{r['total']['p95_ms']:.1f}", f"{r['embed']['median_ms']:.1f}",
                        f"{r['search']['median_ms']:.1f}", _gb(r["peak_rss_bytes"])))
    return out


def _search(results: dict) -> list[str]:
    out = [
        "## 2. Search alone against database size", "",
        "Synthetic unit vectors; single queries, k=10; exact search is also timed with BLAS held to one thread "
        "(threadpoolctl), since on a busy shared machine waking BLAS threads can cost more than they save. "
        "Exact search over float16 storage: each block of 65,536 rows is widened to float32 and multiplied there "
        "(numpy has no fast float16 product). Search RAM: what the searcher holds (KD-tree: float32 rows and "
        "its float64 copy).", "",
        *_table("N", "d", "backend", "storage", "build s", "query median ms", "query p95 ms",
                "median ms, 1 BLAS thread", "search RAM GB", "matrix on disk GB", "peak RSS GB", "note"),
    ]
    for r in results["search"]:
        head = (f"{r['n']:,}", f"{r['d']} (report)" if r["report"] else r["d"], r["backend"], r["storage"])
        if "skipped" in r:
            out.append(_row(*head, *[""] * 7, r["skipped"]))
            continue
        q = r["query"]
        one = f"{r['query_1thread']['median_ms']:.2f}" if "query_1thread" in r else "n/a (single-threaded)"
        out.append(_row(*head, f"{r['build_s']:.2f}", f"{q['median_ms']:.2f}", f"{q['p95_ms']:.2f}", one,
                        _gb(r["search_ram_bytes"]), _gb(r["matrix_disk_bytes"]), _gb(r["peak_rss_bytes"]),
                        f"{q['n']} queries"))
    return out


def _build(results: dict) -> list[str]:
    plan = results["plan"]
    table = build_table(results)
    out = [
        "## 3. Index build throughput", "",
        f"build_index (batch {plan['batch_size']}, {plan['workers']} decode workers, DBA k={plan['dba']}, "
        "thumbnails, cache, sha256) on "
        "the real photos, after one untimed network call per input shape, against the network's pure forward on "
        "ready arrays at the same batch size over the photos' own input shapes (each shape timed, weighted by its "
        "photos), and at their most common shape alone (in brackets: at batch 1). Buckets: the pipeline's fixed-shape batching (none: "
        "every photo its own shape). CPU ms/img counts every thread of the process, so it "
        "moves less than wall time when other programs share the cores.", "",
        *_table(*table["columns"]), *(_row(*cells) for cells in table["rows"]),
    ]
    return out


def build_table(results: dict) -> dict:
    """Returns the build section as a README table: {"columns", "align", "rows"} of formatted cells."""
    columns = ["network", "buckets", "photos", "input shapes (most common)",
               "pure forward img/s: the photos' shapes / most common (batch 1)", "build_index img/s",
               "ratio (to the most common shape)", "CPU ms/img forward / build (ratio)", "network calls", "mean batch",
               "forward s / build s", "decode ms/img (1 thread)", "peak RSS GB"]
    rows = []
    for r in results["build"]:
        if "skipped" in r:
            rows.append([r["network"], r.get("bucket", "none"), r["skipped"], *[""] * 10])
            continue
        h, w, _ = r["common_shape"]
        rows.append([
            r["network"], r.get("bucket", "none"), r["images"],
            f"{r.get('input_shapes', '?')} ({w}x{h}: {r['common_shape_images']} photos)",
            f"{r.get('forward_mix_images_per_s', r['forward_images_per_s']):.2f} / "
            f"{r['forward_images_per_s']:.2f} ({r['forward_batch1']['images_per_s']:.2f})",
            f"{r['build_images_per_s']:.2f}",
            f"{r['ratio']:.2f} ({r.get('ratio_common_shape', r['ratio']):.2f})",
            f"{r['forward']['cpu_ms_per_image']:.0f} / {r['build_cpu_ms_per_image']:.0f} ({r['cpu_ratio']:.2f})",
            r["forward_calls"], f"{r['mean_batch']:.2f}", f"{r['forward_seconds']:.1f} / {r['build_s']:.1f}",
            f"{r['decode_1thread']['median_ms']:.1f}", _gb(r["peak_rss_bytes"])])
    return {"columns": columns, "align": "ll" + "r" * (len(columns) - 2), "rows": rows}


# B7's pure forward at batch 8 (384x288) on one NVIDIA H200, measured by `python -m benchmarks.gpu` in an
# earlier session (docs/benchmarks.md); no GPU was lent to the session that wrote this table.
GPU_B7_IMAGES_PER_S = 38.8
COST_WORKERS = (1, 8, 64)


def cost_table(results: dict) -> dict:
    """Returns the hours a build of 1M and 10M images takes on N workers, from measured forward rates.

    On paper: N workers each at the network's pure forward rate (the build keeps up with it), decoding
    on the same nodes' CPUs; index assembly (DBA's neighbour search) is not counted.
    """
    rates = [(r["network"], "2-core CPU machine (this run, batch 8)",
              r.get("forward_mix_images_per_s", r["forward_images_per_s"]))
             for r in results["build"] if "skipped" not in r and r.get("bucket") != "none"]
    rates.append(("efficientnet-b7", "NVIDIA H200 GPU (earlier session, batch 8)", GPU_B7_IMAGES_PER_S))
    rows = []
    for network, where, rate in rates:
        for n in COST_WORKERS:
            rows.append([network, where, f"{rate:.2f}", n, f"{1e6 / (rate * n) / 3600:.1f}",
                         f"{1e7 / (rate * n) / 3600:.1f}"])
    return {"columns": ["network", "worker", "img/s per worker", "workers", "1M images, hours", "10M images, hours"],
            "align": "llrrrr", "rows": rows}


def _index(results: dict) -> list[str]:
    out = ["## 4. Index size and app cold start", ""]
    s = results.get("index_size", {"skipped": "not run"})
    if "skipped" in s:
        out.append(f"Index size: {s['skipped']}")
    else:
        f = s["file_bytes"]
        out.append(
            f"Index of {s['n']:,} rows: ours {s['ours_bytes'] / 1e6:.1f} MB (feature_list.npy {s['dtype']} "
            f"d={s['dim']} + feature_id.npy); report {s['report_bytes'] / 1e6:,.0f} MB (float32 d={s['report_dim']} "
            f"+ the same ids; computed, not written). Thumbnails apart: {f['thumbnails.bin'] / 1e6:.1f} MB "
            f"(+ {f['thumbnails_offsets.npy'] / 1e3:.0f} kB offsets); index.json {f['index.json'] / 1e3:.1f} kB.")
    out += [
        "", f"Cold start for an index of {results['plan']['coldstart_rows']:,} images (synthetic GeM float16 rows, "
        "real thumbnails), each in a fresh process: import (Keras, TensorFlow), load_index with sha256 checks, "
        "network build, KD-tree build, SearchEngine.warm_up().", "",
        *_table("network", "runtime (conversion cache)", "index MB", "import s", "load_index s", "network build s",
                "tree s", "warm-up s", "total s", "peak RSS GB"),
    ]
    for r in results["coldstart"]:
        if "skipped" in r:
            out.append(_row(r["network"], "", r["skipped"], *[""] * 7))
            continue
        out.append(_row(r["network"], _runtime_label(r), f"{r['index_bytes'] / 1e6:.1f}",
                        *(f"{r[k]:.2f}" for k in ("import_s", "load_index_s", "network_s", "tree_s", "warm_up_s",
                                                  "total_s")), _gb(r["peak_rss_bytes"])))
    return out


def _memory(results: dict) -> list[str]:
    out = ["## 5. Peak memory (RSS) of each part", "", "Each part ran in a process of its own (VmHWM at its end).",
           "", *_table("part", "peak RSS GB")]
    names = (
        [(f"latency {r['network']} {r['pipeline']} {r.get('runtime', 'keras')} (N={r['n_db']}, d={r['dim']})", r)
         for r in results.get("latency", [])]
        + [(f"search N={r['n']:,} d={r['d']} {r['backend']} {r['storage']}", r) for r in results.get("search", [])]
        + [(f"build {r['network']} ({r.get('images')} photos)", r) for r in results.get("build", [])]
        + [(f"cold start {r['network']} {_runtime_label(r)} ({r.get('rows')} rows)", r)
           for r in results.get("coldstart", [])]
    )
    out += [_row(name, _gb(r["peak_rss_bytes"])) for name, r in names if "peak_rss_bytes" in r]
    return out


def _targets(results: dict) -> list[str]:
    out = ["## Targets", ""]
    if results.get("smoke"):
        out += ["Smoke run: measured at the reduced sizes above, not the targets' sizes.", ""]
    out += _table("target", "baseline", "ours", "ratio", "goal", "result")
    for t in results["targets"]:
        verdict = "PASS" if t["pass"] else (
            f"MISS (x{t['shortfall']:.2f} short: {100 * (1 - t['ratio'] / t['goal']):.0f}% under the goal)")
        out.append(_row(f"{t['target']} ({t['what']})", f"{t['baseline']:.4g}", f"{t['ours']:.4g}",
                        f"{t['ratio']:.3g}", f">= {t['goal']:g}", verdict))
    return out


def _runtime_label(r: dict) -> str:
    runtime = r.get("runtime", "keras")
    cache = r.get("conversion_cache", "none")
    return runtime if cache == "none" else f"{runtime} ({cache})"


def _verdict(t: dict) -> str:
    return "PASS" if t["pass"] else f"MISS (x{t['shortfall']:.2f} short)"


def runtime_tables(results: dict) -> dict:
    """Returns the README's runtime tables (latency, cold start, targets) in benchmarks.readme_tables' format."""
    ms = "{:.1f}".format
    latency = {"columns": ["network", "pipeline", "runtime", "query median ms", "p95 ms", "embed median ms",
                           "embed ms, a crop's first visit / later", "search ms"],
               "align": "lllrrrrr", "rows": []}
    for r in results.get("latency", []):
        pipeline = "report (224 squash, flatten)" if r["pipeline"] == "report" else f"default (GeM {r.get('max_side')})"
        if "skipped" in r:
            latency["rows"].append([r["network"], pipeline, r.get("runtime", "keras"), r["skipped"], "", "", "", ""])
            continue
        new, seen = r.get("embed_new_shape"), r.get("embed_seen_shape")
        visits = f"{ms(new['median_ms'])} / {ms(seen['median_ms'])}" if new and seen else ""
        latency["rows"].append([r["network"], pipeline, r["runtime"], ms(r["total"]["median_ms"]),
                                ms(r["total"]["p95_ms"]), ms(r["embed"]["median_ms"]), visits,
                                ms(r["search"]["median_ms"])])
    cold = {"columns": ["network", "runtime (conversion cache)", "import s", "network build s", "warm-up s", "total s"],
            "align": "llrrrr", "rows": []}
    for r in results.get("coldstart", []):
        if "skipped" in r:
            cold["rows"].append([r["network"], _runtime_label(r), r["skipped"], "", "", ""])
            continue
        cold["rows"].append([r["network"], _runtime_label(r),
                             *(f"{r[k]:.1f}" for k in ("import_s", "network_s", "warm_up_s", "total_s"))])
    targets = {"columns": ["target", "baseline", "ours", "ratio", "goal", "result"], "align": "lrrrrl",
               "rows": [[f"{t['target']} ({t['what']})", f"{t['baseline']:.4g}", f"{t['ours']:.4g}",
                         f"{t['ratio']:.2f}", f">= {t['goal']:g}", _verdict(t)]
                        for t in results["targets"] if t["goal_key"] in ("end_to_end", "embedding", "cold_start")]}
    return {"latency": latency, "coldstart": cold, "targets": targets}


def plot_search(results: dict, path: Path) -> None:
    """Writes a log-log plot of median query time and build time against N (section 2) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    done = [r for r in results["search"] if "skipped" not in r]
    ours = [r for r in done if not r["report"]]
    for key in dict.fromkeys((r["backend"], r["storage"]) for r in ours):
        rs = sorted((r for r in ours if (r["backend"], r["storage"]) == key), key=lambda r: r["n"])
        label = f"{key[0]} {key[1]} d={rs[0]['d']}"
        axes[0].plot([r["n"] for r in rs], [r["query"]["median_ms"] for r in rs], "o-", label=label)
        axes[1].plot([r["n"] for r in rs], [max(r["build_s"], 1e-4) for r in rs], "o-", label=label)
    for r in (r for r in done if r["report"]):
        label = f"report: kdtree d={r['d']}"
        axes[0].plot([r["n"]], [r["query"]["median_ms"]], "r*", ms=12, label=label)
        axes[1].plot([r["n"]], [max(r["build_s"], 1e-4)], "r*", ms=12, label=label)
    for ax, title in zip(axes, ("median query time (ms)", "build time (s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("database size N")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_results(results: dict, path: Path | None) -> None:
    """Prints a benchmark's results as JSON, and writes them to `path` (a results file) when given."""
    text = json.dumps(results, indent=2) + "\n"
    print(text, end="")
    if path is not None:
        Path(path).write_text(text)
