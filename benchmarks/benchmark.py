"""Speed and memory of the engine against the report's pipeline, as one markdown report.

    python -m benchmarks.benchmark [--quick] [--only SECTION] [--json FILE] [--plot FILE]
    python -m benchmarks.benchmark --only build --json results/benchmark_build.json

Sections: 1. query latency end to end (image file in, ranked ids out); 2. search alone against
the database size; 3. index build throughput against the network's pure forward; 4. app cold
start and index size; 5. peak memory of each part. Every measurement runs in a process of its
own (`benchmarks.parts`), which reports its own peak RSS. A cell that cannot fit in memory
or in its time budget is shown as skipped, with the reason. Database vectors are synthetic unit
vectors of the right shape; query and build images are the real photos in ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks.parts import RESULT_PREFIX, mem_available_bytes
from benchmarks.report import build_table, cost_table, format_report, plot_search, runtime_tables
from precompute.options import ALPHA, DEFAULT_DBA, DEFAULT_MAX_SIDE, DEFAULT_QE
from retrieval.defaults import DEFAULT

DEFAULT_BUCKET = DEFAULT.descriptor.bucket or "none"
SECTIONS = ("latency", "search", "build", "cold_start")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rparis6k"
GB = 1e9
# Weights do not change speed; B7's ImageNet weights would need a download, Lite0's ship in a package.
WEIGHTS = {"efficientnet-b7": "none", "efficientnet-lite0": "imagenet"}
CHANNELS = {"efficientnet-b7": 2560, "efficientnet-lite0": 1280}
REPORT_SIDE_CELLS = 7  # the report's 224x224 input gives a 7x7 feature map
KDTREE_FLOAT16 = "as float32: load_index widens float16 to float32, KDTree copies to float64"
GOALS = {"search": 100.0, "end_to_end": 5.0, "index_size": 40.0, "build": 0.85, "embedding": 2.0, "cold_start": 1.0}
# A runtime's cold start may take this much longer than Keras' when it converts the network first.
COLDSTART_ALLOWANCE_S = 10.0


@dataclass(frozen=True)
class Plan:
    """What to measure; `FULL` and `QUICK` are the two used."""

    latency_networks: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-b7")
    latency_db: int = 5063
    latency_queries: int = 50
    warm_queries: int = 3
    search_ns: tuple[int, ...] = (1000, 5063, 10_000, 100_000, 1_000_000)
    search_dim: int = 2560  # B7 GeM
    report_search: tuple[int, int] = (5063, 125_440)  # (n, d): B7 7x7 flatten
    search_queries: int = 20
    cell_budget_s: float = 180.0
    # (network, photos, bucket): the default fixed-shape buckets, and Lite0 without for comparison.
    builds: tuple[tuple[str, int, str], ...] = (
        ("efficientnet-lite0", 409, "none"), ("efficientnet-lite0", 409, DEFAULT_BUCKET),
        ("efficientnet-b7", 48, DEFAULT_BUCKET),
    )
    batch_size: int = 8
    workers: int = 2
    forward_budget_s: float = 20.0
    # What runs the network in the latency and cold-start sections (the report's pipeline: Keras, as it had).
    runtimes: tuple[str, ...] = ("keras", "onnxruntime", "openvino")
    coldstart_networks: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-b7")
    coldstart_rows: int = 6000
    size_rows: int = 5063
    thumbnail_sources: int = 409
    max_side: int = DEFAULT_MAX_SIDE
    # What build_index records by default (the report's pipeline uses none): QE at query time, DBA at build.
    qe: int = DEFAULT_QE
    dba: int = DEFAULT_DBA
    alpha: float = ALPHA


FULL = Plan()
QUICK = replace(
    FULL, latency_networks=("efficientnet-lite0",), latency_db=1000, latency_queries=10, warm_queries=1,
    search_ns=(1000, 5063), report_search=(1000, 62_720), search_queries=8, cell_budget_s=40.0,
    builds=(("efficientnet-lite0", 24, DEFAULT_BUCKET),), forward_budget_s=4.0,
    coldstart_networks=("efficientnet-lite0",), thumbnail_sources=16,
    # OpenVINO runs through the same code as ONNX Runtime here; leaving it out saves about a fifth of the run.
    runtimes=("keras", "onnxruntime"),
)


def run_part(part: str, config: dict, *, timeout_s: float) -> dict:
    """Returns one part's result, measured in a fresh process, or {"skipped": reason}."""
    cmd = [sys.executable, "-m", "benchmarks.parts", part, json.dumps(config)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"skipped": f"skipped: over time budget (stopped at {timeout_s:.0f} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"skipped": f"failed: {why}" if proc.returncode > 0 else f"killed (signal {-proc.returncode})"}
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["wall_s"] = time.perf_counter() - t0
    return result


def memory_skip(need_bytes: float, *, total_bytes: float, available_bytes: float) -> str | None:
    """Returns why a run needing `need_bytes` must be skipped, or None when it fits."""
    if need_bytes > total_bytes:
        return f"skipped: needs {need_bytes / GB:.0f} GB ({total_bytes / GB:.0f} GB machine)"
    if need_bytes > 0.85 * available_bytes:
        return f"skipped: needs {need_bytes / GB:.1f} GB, {available_bytes / GB:.1f} GB available now"
    return None


def search_need_bytes(n: int, d: int, backend: str, storage: str) -> float:
    """Returns the memory a search cell needs: its matrices plus the finiteness check's bool copy."""
    if backend == "exact" and storage == "float16":
        return n * d * 2 + 65536 * d * 4 + 0.3 * GB
    return n * d * (4 + 1 + (8 if backend == "kdtree" else 0)) + 0.3 * GB


def estimate_seconds(previous: dict | None, n: int) -> float:
    """Returns a cell's expected wall time, scaled linearly in n from the same backend's last cell."""
    if not previous or "skipped" in previous:
        return 0.0
    return previous["wall_s"] * n / previous["n"]


def machine_info() -> dict:
    """Returns CPU model, core count, memory and load average of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": model, "nproc": os.cpu_count(), "mem_total_bytes": total, "python": platform.python_version(),
            "load_start": list(os.getloadavg())}


def measure_latency(plan: Plan, say) -> list[dict]:
    """Section 1: SearchEngine.search(path) for the report's and the default pipeline, per network."""
    rows = []
    cells = [(n, p, r) for n in plan.latency_networks
             for p, r in [("report", "keras"), *(("default", r) for r in plan.runtimes)]]
    with tempfile.TemporaryDirectory(prefix="benchmark-runtimes-") as runtime_cache:
        for network, pipeline, runtime in cells:
            dim = CHANNELS[network] * (REPORT_SIDE_CELLS ** 2 if pipeline == "report" else 1)
            config = {
                "runtime": runtime, "runtime_cache": runtime_cache,
                "network": network, "weights": WEIGHTS[network], "pipeline": pipeline, "max_side": plan.max_side,
                "n_db": plan.latency_db, "n_queries": plan.latency_queries, "warm_queries": plan.warm_queries,
                "queries_dir": str(DATA / "query_crops"), "k": 10, "backend": "kdtree",
                "qe": 0 if pipeline == "report" else plan.qe, "alpha": plan.alpha,
                "bucket": "none" if pipeline == "report" else DEFAULT_BUCKET,
            }
            # float32 rows, the KD-tree's float64 copy, the finiteness check's bools, and the network.
            need = plan.latency_db * dim * 13 + 2 * GB
            skip = memory_skip(need, total_bytes=_total(), available_bytes=mem_available_bytes())
            say(f"latency {network} {pipeline} {runtime}")
            result = {"skipped": skip} if skip else run_part("latency", config, timeout_s=4 * plan.cell_budget_s)
            rows.append({"network": network, "pipeline": pipeline, "runtime": runtime, "dim": dim,
                         "n_db": plan.latency_db, **result})
    return rows


def measure_search(plan: Plan, say) -> list[dict]:
    """Section 2: search alone over synthetic unit rows, per size, backend and storage."""
    cells = [(n, plan.search_dim, b, s) for n in plan.search_ns
             for b, s in (("kdtree", "float32"), ("kdtree", "float16"), ("exact", "float32"), ("exact", "float16"))]
    cells.append((*plan.report_search, "kdtree", "float32"))
    rows, last = [], {}
    for n, d, backend, storage in cells:
        row = {"n": n, "d": d, "backend": backend, "storage": storage, "report": d != plan.search_dim}
        if backend == "kdtree" and storage == "float16":
            rows.append({**row, "skipped": KDTREE_FLOAT16})
            continue
        skip = memory_skip(search_need_bytes(n, d, backend, storage), total_bytes=_total(),
                           available_bytes=mem_available_bytes())
        estimate = estimate_seconds(last.get((d, backend, storage)), n)
        if not skip and estimate > plan.cell_budget_s:
            skip = f"skipped: over time budget (about {estimate:.0f} s > {plan.cell_budget_s:.0f} s)"
        say(f"search n={n} d={d} {backend} {storage}")
        config = {"n": n, "d": d, "backend": backend, "storage": storage, "k": 10,
                  "n_queries": plan.search_queries + 1, "query_budget_s": plan.cell_budget_s / 4}
        result = {"skipped": skip} if skip else run_part("search", config, timeout_s=plan.cell_budget_s)
        rows.append({**row, **result})
        last[(d, backend, storage)] = rows[-1]
    return rows


def measure_build(plan: Plan, say) -> list[dict]:
    """Section 3: build_index on the real photos against the pure forward, per network."""
    rows = []
    for network, n_images, bucket in plan.builds:
        config = {"network": network, "weights": WEIGHTS[network], "images_dir": str(DATA / "jpg"), "bucket": bucket,
                  "n_images": n_images, "batch_size": plan.batch_size, "workers": plan.workers,
                  "max_side": plan.max_side, "forward_budget_s": plan.forward_budget_s, "decode_images": 32,
                  "dba": plan.dba, "qe": plan.qe, "alpha": plan.alpha}
        say(f"build {network} on {n_images} photos, buckets {bucket}")
        rows.append({"network": network, "bucket": bucket,
                     **run_part("build", config, timeout_s=6 * plan.cell_budget_s)})
    return rows


def measure_index(plan: Plan, say, tmp: Path) -> tuple[dict, list[dict]]:
    """Section 4: the index size against the report's, and the cold start per network."""
    base = {"images_dir": str(DATA / "jpg"), "thumbnail_sources": plan.thumbnail_sources, "weights": "none",
            "max_side": plan.max_side, "dtype": "float16", "qe": plan.qe, "alpha": plan.alpha}
    say("index size")
    config = {**base, "n": plan.size_rows, "dim": CHANNELS["efficientnet-b7"], "network": "efficientnet-b7",
              "out": str(tmp / "size")}
    size = run_part("make_index", config, timeout_s=plan.cell_budget_s)
    if "skipped" not in size:
        files = size["file_bytes"]
        size["ours_bytes"] = files["feature_list.npy"] + files["feature_id.npy"]
        report_dim = CHANNELS["efficientnet-b7"] * REPORT_SIDE_CELLS ** 2
        # Computed, not written: a .npy header (128 bytes) and float32 rows, with the same id file.
        size["report_bytes"] = 128 + plan.size_rows * report_dim * 4 + files["feature_id.npy"]
        size["report_dim"] = report_dim
    return size, measure_coldstart(plan, say, tmp)


def measure_coldstart(plan: Plan, say, tmp: Path) -> list[dict]:
    """Section 4b: the app's cold start per network and runtime; a runtime that converts is started
    twice, with an empty conversion cache and then with the one the first start left."""
    base = {"images_dir": str(DATA / "jpg"), "thumbnail_sources": plan.thumbnail_sources,
            "max_side": plan.max_side, "dtype": "float16", "qe": plan.qe, "alpha": plan.alpha}
    cold = []
    for network in plan.coldstart_networks:
        out = tmp / f"cold-{network}"
        weights = WEIGHTS[network]
        if weights == "none":
            # Random weights saved once: every start builds the same network, so a cached conversion can match.
            weights = str(tmp / f"{network}-random.weights.h5")
            saved = run_part("save_weights", {"network": network, "out": weights}, timeout_s=plan.cell_budget_s)
            if "skipped" in saved:
                cold.append({"network": network, **saved})
                continue
        say(f"cold start {network}")
        made = run_part("make_index", {**base, "n": plan.coldstart_rows, "dim": CHANNELS[network], "network": network,
                                       "weights": weights, "out": str(out)}, timeout_s=plan.cell_budget_s)
        if "skipped" in made:
            cold.append({"network": network, **made})
            continue
        cache = tmp / f"runtime-cache-{network}"
        starts = [(r, c) for r in plan.runtimes for c in (("none",) if r == "keras" else ("empty", "filled"))]
        for runtime, conversion in starts:
            config = {"index_dir": str(out), "network": network, "weights": weights, "backend": "kdtree",
                      "runtime": runtime, "runtime_cache": str(cache)}
            result = run_part("coldstart", config, timeout_s=2 * plan.cell_budget_s)
            cold.append({"network": network, "runtime": runtime, "conversion_cache": conversion,
                         "index_bytes": sum(made["file_bytes"].values()), **result})
    return cold


def _total() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _target(name: str, goal_key: str, baseline: float, ours: float, what: str, *,
            higher_is_better: bool = False) -> dict:
    ratio = ours / baseline if higher_is_better else baseline / ours
    goal = GOALS[goal_key]
    return {"target": name, "goal_key": goal_key, "what": what, "higher_is_better": higher_is_better, "baseline": baseline, "ours": ours,
            "ratio": ratio, "goal": goal, "pass": ratio >= goal, "shortfall": None if ratio >= goal else goal / ratio}


def compute_targets(results: dict) -> list[dict]:
    """Returns every target with its baseline, our figure, their ratio and PASS/MISS; pure."""
    targets = []
    search = [r for r in results.get("search", []) if "skipped" not in r]
    report = next((r for r in search if r["report"]), None)
    if report:
        for r in (r for r in search if not r["report"] and r["n"] == report["n"]):
            name = f"search N={r['n']}: report KD-tree d={report['d']} / ours {r['backend']} {r['storage']} d={r['d']}"
            baseline = report["query"]["median_ms"]
            targets.append(_target(name, "search", baseline, r["query"]["median_ms"], "median query ms"))
            if "query_1thread" in r:
                targets.append(_target(f"{name}, 1 BLAS thread", "search", baseline,
                                       r["query_1thread"]["median_ms"], "median query ms"))
    targets += runtime_targets(results)
    size = results.get("index_size", {"skipped": "not run"})
    if "skipped" not in size:
        targets.append(_target(f"index size, N={size['n']}: report float32 d={size['report_dim']} / ours GeM "
                               f"{size['dtype']} d={size['dim']} (+ ids both)", "index_size",
                               size["report_bytes"], size["ours_bytes"], "bytes"))
    for r in results.get("build", []):
        if "skipped" not in r:
            targets.append(_target(f"build throughput, {r['network']} (buckets {r.get('bucket', 'none')}): "
                                   "build_index / pure forward", "build",
                                   r.get("forward_mix_images_per_s", r["forward_images_per_s"]),
                                   r["build_images_per_s"], "images/s",
                                   higher_is_better=True))
    return targets


def runtime_targets(results: dict) -> list[dict]:
    """Returns the runtime targets: end to end against the report, query embedding and cold start
    against Keras; pure."""
    targets = []
    latency = {(r["network"], r["pipeline"], r.get("runtime", "keras")): r
               for r in results.get("latency", []) if "skipped" not in r}
    for network, pipeline, runtime in latency:
        if pipeline != "default":
            continue
        ours = latency[network, pipeline, runtime]
        if (network, "report", "keras") in latency:
            targets.append(_target(
                f"end to end, {network}: report pipeline (keras) / default (max side {ours['max_side']}, {runtime})",
                "end_to_end", latency[network, "report", "keras"]["total"]["median_ms"], ours["total"]["median_ms"],
                "median query ms"))
        if runtime != "keras" and (network, pipeline, "keras") in latency:
            targets.append(_target(
                f"query embedding, {network}, max side {ours['max_side']}: keras / {runtime}", "embedding",
                latency[network, pipeline, "keras"]["embed"]["median_ms"], ours["embed"]["median_ms"],
                "median embed ms"))
    cold = {(r["network"], r.get("runtime", "keras"), r.get("conversion_cache", "none")): r
            for r in results.get("coldstart", []) if "skipped" not in r}
    for (network, runtime, cache), r in cold.items():
        keras = cold.get((network, "keras", "none"))
        if runtime == "keras" or keras is None:
            continue
        allowance = COLDSTART_ALLOWANCE_S if cache == "empty" else 0.0
        targets.append(_target(
            f"cold start, {network}, {runtime} with {'an empty' if cache == 'empty' else 'a filled'} conversion "
            f"cache: keras + {allowance:g} s / {runtime}", "cold_start", keras["total_s"] + allowance,
            r["total_s"], "s"))
    return targets


def run_benchmark(plan: Plan, *, command: str, say=lambda msg: None, sections=SECTIONS) -> dict:
    """Runs the sections named (default: all) and returns their figures and targets as one JSON-ready dict."""
    t0 = time.perf_counter()
    results = {"command": command, "machine": machine_info(), "plan": asdict(plan), "smoke": plan != FULL}
    if "latency" in sections:
        results["latency"] = measure_latency(plan, say)
    if "search" in sections:
        results["search"] = measure_search(plan, say)
    if "build" in sections:
        results["build"] = measure_build(plan, say)
    if "cold_start" in sections:
        with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
            results["index_size"], results["coldstart"] = measure_index(plan, say, Path(tmp))
    results["machine"]["load_end"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - t0
    results["targets"] = compute_targets(results)
    results["tables"] = {}
    if "build" in sections:
        results["tables"].update(build=build_table(results), cost=cost_table(results))
    if "latency" in sections or "cold_start" in sections:
        results["tables"].update(runtime_tables(results))
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: Lite0 only, Keras and ONNX Runtime only, small N (a few minutes on 2 cores)")
    parser.add_argument("--only", default=",".join(SECTIONS), type=_sections,
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)}); search alone: the "
                        "search section at scale (ann, exact, kdtree up to 1M rows; benchmarks/scale.py), merged into --json")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--plot", default=None, help="also write the search-versus-N log-log plot (PNG) here")
    parser.add_argument("--sizes", default=None, help="with --only search: comma-separated N (default 100000,1000000)")
    parser.add_argument("--networks", default=None, help="with --only search: lite0, b7 or both (default)")
    parser.add_argument("--no-sweep", action="store_true", help="with --only search: skip the index-type comparison")
    parser.add_argument("--work", default=None, help="with --only search: folder for the generated indexes "
                        "(default: a temporary folder; 1M x 2,560 needs about 11 GB)")
    return parser.parse_args(argv)


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none)'}; "
                                         f"known: {', '.join(SECTIONS)}")
    return names



def run_search_section(args) -> int:
    """--only search: runs benchmarks/scale.py's section, merges it into --json, prints its tables."""
    from benchmarks import scale
    from benchmarks.readme_tables import render_table

    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else scale.SIZES
    wanted = args.networks.split(",") if args.networks else ["lite0", "b7"]
    networks = tuple(n for n in scale.NETWORKS if any(w in n[0] for w in wanted))
    command = "python -m benchmarks.benchmark --only search" + (f" --sizes {args.sizes}" if args.sizes else "") + \
        (f" --networks {args.networks}" if args.networks else "") + (" --no-sweep" if args.no_sweep else "")
    say = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.work) as tmp:
        found = scale.measure_search_scale(run_part, say, Path(tmp), sizes=sizes, networks=networks,
                                           sweep=not args.no_sweep, data_root=str(DATA.parent),
                                           cache_dir=str(ROOT / ".cache" / "evaluate"))
    found.update({"command": command, "machine": machine_info()})
    results = scale.merge_cells(scale.load_json(args.json) if args.json else None, found)
    results["targets"] = scale.scale_targets(results)
    results["tables"] = scale.scale_tables(results)
    for table in results["tables"].values():
        print(render_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (DATA / "query_crops").is_dir() or not (DATA / "jpg").is_dir():
        print("error: the benchmark needs the photos in ../shared/data/rparis6k (see its README)", file=sys.stderr)
        return 2
    if args.only == ("search",):
        return run_search_section(args)
    command = "python -m benchmarks.benchmark" + (" --quick" if args.quick else "")
    if args.only != SECTIONS:
        command += f" --only {','.join(args.only)}"
    results = run_benchmark(QUICK if args.quick else FULL, command=command, sections=args.only,
                            say=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True))
    print(format_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot and "search" in args.only:
        plot_search(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
